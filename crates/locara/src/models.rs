//! `pull`, `import`, `list`, `rm`.

use crate::config::Config;
use crate::progress::Bar;
use anyhow::{Context, Result};
use locara_core::Bytes;
use locara_daemon::store::{ModelEntry, ModelName, Store, StoreError};
use std::path::Path;
use std::process::ExitCode;

pub fn pull(name: &str) -> Result<ExitCode> {
    let config = Config::load(false)?;
    let name: ModelName = name.parse()?;
    let store = config.store()?;
    if store.get(&name)?.is_some() {
        println!("{name} is already here");
        return Ok(ExitCode::SUCCESS);
    }
    let entry = fetch(&config, &store, &name)?;
    println!(
        "{} ({}) stored, sha256 verified",
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
