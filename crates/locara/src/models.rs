//! `pull`, `import`, `list`, `rm`.

use crate::config::Config;
use crate::progress::Bar;
use anyhow::{Context, Result};
use locara_core::Bytes;
use locara_daemon::store::adopt::{self, Held, Tool};
use locara_daemon::store::hub::{HubConfig, HubRef, PlannedPull};
use locara_daemon::store::{Alias, ModelEntry, ModelName, Store, StoreError};
use std::path::Path;
use std::process::ExitCode;

pub fn pull(spec: &str, store_as: Option<&str>, force: bool) -> Result<ExitCode> {
    let config = Config::load(false)?;
    let store = config.store()?;
    let store_as: Option<ModelName> = store_as.map(str::parse).transpose()?;
    if HubRef::looks_like(spec) {
        let hub = HubConfig::from_env()?;
        let reference = HubRef::parse(spec, &hub)?;
        return pull_hub(&store, hub, &reference, store_as, None, force);
    }
    let name: ModelName = spec.parse()?;
    if store.get(&name)?.is_some() {
        println!("{name} is already here");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(alias) = config.catalog.alias(&name) {
        let hub = HubConfig::from_env()?;
        let reference = alias.reference(&hub)?;
        let name = store_as.unwrap_or_else(|| alias.name.clone());
        return pull_hub(&store, hub, &reference, Some(name), Some(alias), force);
    }
    let entry = fetch(&config, &store, &name)?;
    println!(
        "{} ({}) stored, sha256 verified",
        entry.name,
        Bytes(entry.size)
    );
    Ok(ExitCode::SUCCESS)
}

/// A pull from the Hub: the listing, the file chosen (said which and why),
/// `locara plan`'s verdict from the file's header, then the download.
fn pull_hub(
    store: &Store,
    config: HubConfig,
    reference: &HubRef,
    store_as: Option<ModelName>,
    alias: Option<&Alias>,
    force: bool,
) -> Result<ExitCode> {
    let pinned = alias.and_then(|a| a.sha256.as_deref());
    let PlannedPull {
        hub, choice, name, ..
    } = PlannedPull::new(config, reference.clone(), store_as, pinned)?;
    if let Some(existing) = store.get(&name)? {
        let wanted = format!("{}/{}", reference.repo, choice.files[0].path);
        if existing
            .origin
            .as_deref()
            .is_some_and(|o| o.contains(&wanted))
        {
            println!("{name} is already here ({})", existing.path.display());
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::bail!(
            "the name {name} is taken by another model ({}); `--name` stores {reference} under another",
            existing.origin.as_deref().unwrap_or(&existing.source)
        );
    }
    let shown = if choice.files.len() > 1 {
        format!(
            "{} and {} more parts",
            choice.files[0].path,
            choice.files.len() - 1
        )
    } else {
        choice.files[0].path.clone()
    };
    println!(
        "{reference}: {shown} ({}, {}): {}",
        choice
            .quant
            .as_deref()
            .unwrap_or("quantisation not in the name"),
        Bytes(choice.size()),
        choice.reason
    );
    if choice.files.iter().any(|f| f.sha256.is_none()) {
        println!(
            "  the Hub publishes no sha256 for it: only its size and the GGUF guard are checked"
        );
    }
    match hub.header(reference, &choice.files[0]) {
        Ok(header) => {
            let mut shape = header.shape();
            if choice.files.len() > 1 {
                // The first part's header lists only its own tensors.
                shape.weights_bytes = shape.weights_bytes.max(choice.size());
            }
            match crate::plan::quick_verdict(&shape) {
                Ok(v) => {
                    println!("plan: {}", v.line);
                    if !v.fits_some_context && !force {
                        anyhow::bail!(
                            "{name} does not fit this machine's budget at any context; nothing was \
                             downloaded (--force pulls it anyway)"
                        );
                    }
                }
                Err(e) => println!("plan: no verdict ({e:#})"),
            }
        }
        // A single file whose header fails the guard is refused before its
        // download; a split model's first part alone may not describe it.
        Err(e) if choice.files.len() == 1 => return Err(e.into()),
        Err(e) => println!("plan: no verdict ({e})"),
    }
    let entry = store.pull_hub(&hub, reference, &choice, &name, &mut Bar::default())?;
    let checked = if choice.files.iter().all(|f| f.sha256.is_some()) {
        "sha256 verified"
    } else {
        "size and GGUF guard checked"
    };
    println!("{} ({}) stored, {checked}", entry.name, Bytes(entry.size));
    Ok(ExitCode::SUCCESS)
}

/// Pulls a catalog model with a progress bar.
pub fn fetch(config: &Config, store: &Store, name: &ModelName) -> Result<ModelEntry> {
    let entry = config
        .catalog
        .find(name)
        .ok_or_else(|| StoreError::NotInCatalog(name.clone()))?;
    Ok(store.pull(entry, &mut Bar::default())?)
}

pub fn import(file: &Path, name: Option<&str>) -> Result<ExitCode> {
    let config = Config::load(false)?;
    let name: ModelName = match name {
        Some(n) => n.parse()?,
        None => name_from_file(file)?,
    };
    let entry = config.store()?.import(file, &name, &mut Bar::default())?;
    println!(
        "imported {} as {} ({}, {} {})",
        file.display(),
        entry.name,
        Bytes(entry.size),
        entry.architecture,
        entry.quantization
    );
    Ok(ExitCode::SUCCESS)
}

/// `locara import --from ollama|lmstudio [MODEL]`: adopts each model found
/// (all, or the one named); one that fails is reported and the others go on.
pub fn adopt(
    tool: &str,
    only: Option<&str>,
    name: Option<&str>,
    dir: Option<&Path>,
    reference_only: bool,
) -> Result<ExitCode> {
    let config = Config::load(false)?;
    let store = config.store()?;
    let tool = match tool {
        "ollama" => Tool::Ollama,
        _ => Tool::Lmstudio,
    };
    let dir = tool.models_dir(dir)?;
    let found = match tool {
        Tool::Ollama => adopt::scan_ollama(&dir, only)?,
        Tool::Lmstudio => adopt::scan_lmstudio(&dir, only)?,
    };
    if found.is_empty() {
        let what = only.map_or_else(|| "no models".to_string(), |o| format!("no model {o:?}"));
        anyhow::bail!("{} has {what} in {}", tool.display_name(), dir.display());
    }
    let name: Option<ModelName> = name.map(str::parse).transpose()?;
    if name.is_some() && found.len() > 1 {
        anyhow::bail!(
            "--name names one model, but {} models were found; name the one to adopt",
            found.len()
        );
    }
    let mut failed = 0;
    for f in &found {
        let target = name.clone().unwrap_or_else(|| f.name.clone());
        if let Some(existing) = store.get(&target)? {
            let same = existing.sha256 == f.sha256.clone().unwrap_or_default()
                || existing
                    .adopted
                    .as_ref()
                    .is_some_and(|a| a.files.iter().map(|x| &x.path).eq(f.files.iter()));
            if same {
                println!("{target} is already here");
            } else {
                println!(
                    "skipped {} {}: the name {target} is taken (`--name` gives another)",
                    tool.display_name(),
                    f.label
                );
            }
            continue;
        }
        match store.adopt(f, &target, reference_only, &mut Bar::default()) {
            Ok(entry) => println!(
                "adopted {} {} as {} ({}, {} {}): {}",
                tool.display_name(),
                f.label,
                entry.name,
                Bytes(entry.size),
                entry.architecture,
                entry.quantization,
                where_it_lives(&entry)
            ),
            Err(e) => {
                failed += 1;
                eprintln!("error: {} {}: {e}", tool.display_name(), f.label);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where a model's bytes are: in the store, a hard link to another tool's
/// file, or that file itself.
fn where_it_lives(entry: &ModelEntry) -> String {
    match &entry.adopted {
        None => "in the store".to_string(),
        Some(a) => {
            let first = a
                .files
                .first()
                .map(|f| f.path.display().to_string())
                .unwrap_or_default();
            match a.held {
                Held::HardLink => format!("hard link to {}'s {first}", a.tool.display_name()),
                Held::Reference => format!("{}'s {first} (by reference)", a.tool.display_name()),
            }
        }
    }
}

/// `My-Model.Q4_K_M.gguf` → `my-model.q4_k_m`.
fn name_from_file(file: &Path) -> Result<ModelName> {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut cleaned = locara_daemon::store::name_part(&stem);
    cleaned.truncate(locara_daemon::store::MAX_NAME_LEN);
    cleaned
        .parse()
        .with_context(|| format!("no usable name in {}; give one with --name", file.display()))
}

pub fn list(json: bool) -> Result<ExitCode> {
    let config = Config::load(false)?;
    let models = config.store()?.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(ExitCode::SUCCESS);
    }
    if models.is_empty() {
        println!(
            "no models yet; `locara pull {}` fetches the default",
            config.catalog.default
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:>10}  {:<10} {:<12} {:<9} WHERE",
        "NAME", "SIZE", "QUANT", "ARCH", "SOURCE"
    );
    for m in models {
        println!(
            "{:<32} {:>10}  {:<10} {:<12} {:<9} {}",
            m.name,
            Bytes(m.size).to_string(),
            m.quantization,
            m.architecture,
            m.source,
            where_it_lives(&m)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rm(name: &str) -> Result<ExitCode> {
    let config = Config::load(false)?;
    let name: ModelName = name.parse()?;
    config.store()?.remove(&name)?;
    println!("removed {name}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::name_from_file;
    use std::path::Path;

    #[test]
    fn import_names_come_from_the_file_name() {
        let n = name_from_file(Path::new("/x/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
        assert_eq!(n.as_str(), "smollm2-135m-instruct.q4_1");
        let n = name_from_file(Path::new("My Model (v2).gguf")).unwrap();
        assert_eq!(n.as_str(), "my-model--v2-");
        assert!(name_from_file(Path::new("/x/....gguf")).is_err());
    }
}
