//! `pull`, `import`, `list`, `rm`.

use crate::config::Config;
use crate::progress::Bar;
use anyhow::{Context, Result};
use locara_core::Bytes;
use locara_daemon::store::hub::{self, Hub, HubConfig, HubRef};
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
    let hub = Hub::new(config)?;
    let files = hub.list(reference)?;
    let mut choice = hub::choose(reference, &files)?;
    if let Some(pinned) = alias.and_then(|a| a.sha256.as_ref()) {
        // The catalog's pin wins; a listing that disagrees means the file
        // on the Hub is not the one the catalog names.
        let first = &mut choice.files[0];
        if let Some(listed) = &first.sha256 {
            if listed != pinned {
                anyhow::bail!(
                    "{reference}: the Hub lists sha256 {listed} for {}, the catalog pins {pinned}; \
                     nothing was downloaded",
                    first.path
                );
            }
        }
        first.sha256 = Some(pinned.clone());
    }
    let name = match store_as {
        Some(n) => n,
        None => hub::default_name(reference, &choice)?,
    };
    if let Some(existing) = store.get(&name)? {
        println!("{name} is already here ({})", existing.path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let shown = if choice.files.len() > 1 {
        format!("{} and {} more parts", choice.files[0].path, choice.files.len() - 1)
    } else {
        choice.files[0].path.clone()
    };
    println!(
        "{reference}: {shown} ({}, {}): {}",
        choice.quant.as_deref().unwrap_or("quantisation not in the name"),
        Bytes(choice.size()),
        choice.reason
    );
    if choice.files.iter().any(|f| f.sha256.is_none()) {
        println!("  the Hub publishes no sha256 for it: only its size and the GGUF guard are checked");
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
    println!(
        "{} ({}) stored, {checked}",
        entry.name,
        Bytes(entry.size)
    );
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

/// `My-Model.Q4_K_M.gguf` → `my-model.q4_k_m`.
fn name_from_file(file: &Path) -> Result<ModelName> {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-', '_']).to_string();
    let mut cleaned = cleaned.replace("..", ".");
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
        "{:<24} {:>10}  {:<10} {:<12} SOURCE",
        "NAME", "SIZE", "QUANT", "ARCH"
    );
    for m in models {
        println!(
            "{:<24} {:>10}  {:<10} {:<12} {}",
            m.name,
            Bytes(m.size).to_string(),
            m.quantization,
            m.architecture,
            m.source
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
