//! Where things are: the data directory (models) and the cache directory
//! (built llama.cpp tools).

use anyhow::{ensure, Context, Result};
use std::fs;
use std::path::PathBuf;

/// The default model's place in the store, under the data directory.
pub const DEFAULT_MODEL: &str = "models/smollm2+135m/model.gguf";

/// The data directory, as `locara` finds it: `LOCARA_HOME`, else
/// `~/Library/Application Support/Locara` on macOS and
/// `$XDG_DATA_HOME/locara` (default `~/.local/share/locara`) elsewhere.
pub fn data_dir() -> Result<PathBuf> {
    if let Some(home) = non_empty_env("LOCARA_HOME") {
        return Ok(home);
    }
    let home = home_dir()?;
    if cfg!(target_os = "macos") {
        return Ok(home.join("Library/Application Support/Locara"));
    }
    Ok(non_empty_env("XDG_DATA_HOME")
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| home.join(".local/share"))
        .join("locara"))
}

/// The model a benchmark runs: `--model` when given, else the default
/// model in the data directory; either must be a file.
pub fn model_path(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(path) => {
            ensure!(path.is_file(), "--model {}: no such file", path.display());
            path
        }
        None => {
            let path = data_dir()?.join(DEFAULT_MODEL);
            ensure!(
                path.is_file(),
                "no --model given and the default model is not at {}; run `locara pull smollm2:135m` first",
                path.display()
            );
            path
        }
    };
    Ok(path)
}

/// Where built llama.cpp tools are kept: `$XDG_CACHE_HOME/locara/bench`
/// (default `~/.cache/locara/bench`).
pub fn cache_dir() -> Result<PathBuf> {
    let base = match non_empty_env("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        Some(dir) => dir,
        None => home_dir()?.join(".cache"),
    };
    Ok(base.join("locara").join("bench"))
}

/// A benchmark's working directory (its servers' logs and data
/// directories): `<temp>/<name>-<pid>`, made empty at the start and removed
/// when dropped unless `keep` is set then.
pub struct WorkDir {
    pub path: PathBuf,
    pub keep: bool,
    /// What it holds, for the line that says where it was kept.
    what: &'static str,
}

impl WorkDir {
    pub fn create(name: &str, what: &'static str, keep: bool) -> Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, keep, what })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            crate::progress(&format!(
                "the working directory ({}) is kept in {}",
                self.what,
                self.path.display()
            ));
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn home_dir() -> Result<PathBuf> {
    non_empty_env("HOME").context("HOME is not set; pass --model and --cache-dir")
}

fn non_empty_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_is_under_the_cache_home() {
        // Only checks the shape; the environment is the test runner's.
        let dir = cache_dir().unwrap();
        assert!(dir.ends_with("locara/bench"), "{}", dir.display());
    }
}
