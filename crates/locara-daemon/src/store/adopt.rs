//! Adopting the models other tools already downloaded: Ollama's blobs and
//! LM Studio's GGUF files are registered in the store where they lie,
//! without a copy.
//!
//! ```text
//! Ollama     $OLLAMA_MODELS or ~/.ollama/models
//!              manifests/registry.ollama.ai/library/NAME/TAG   JSON; the layer of media type
//!                                                              application/vnd.ollama.image.model
//!              blobs/sha256-<hex>                              names the model's blob
//! LM Studio  ~/.lmstudio/models/PUBLISHER/REPO/*.gguf (older: ~/.cache/lm-studio/models)
//! ```
//!
//! Each file passes the GGUF guard and is hashed once. The store then holds
//! a hard link to it where the file system allows one (same device), or
//! else only `info.json` with the file's path, size, sha256 and the
//! modification time and inode it had when hashed. Before each load
//! ([`super::Store::check_for_load`]) an adopted file's size is checked,
//! and its sha256 again whenever its modification time or inode changed (so
//! a file replaced or rewritten by the other tool is never loaded under the
//! old checksum, and an untouched multi-gigabyte file is not re-read at
//! every load). Removing an adopted model removes the store's link or
//! record only; the other tool's file stays.

use super::hub::quant_of;
use super::{io_err, ModelName, StoreError};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// The tools whose models can be adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Ollama,
    Lmstudio,
}

impl Tool {
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Ollama => "ollama",
            Tool::Lmstudio => "lmstudio",
        }
    }

    /// The name users know it by.
    pub fn display_name(self) -> &'static str {
        match self {
            Tool::Ollama => "Ollama",
            Tool::Lmstudio => "LM Studio",
        }
    }

    /// The tool's models directory: `override_dir`, else (Ollama)
    /// `OLLAMA_MODELS`, else the first of the default places that exists.
    pub fn models_dir(self, override_dir: Option<&Path>) -> Result<PathBuf, StoreError> {
        if let Some(dir) = override_dir {
            return Ok(dir.to_path_buf());
        }
        if self == Tool::Ollama {
            if let Some(dir) = std::env::var_os("OLLAMA_MODELS").filter(|d| !d.is_empty()) {
                return Ok(PathBuf::from(dir));
            }
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        let candidates: Vec<PathBuf> = match (self, &home) {
            (_, None) => Vec::new(),
            (Tool::Ollama, Some(h)) => vec![h.join(".ollama/models")],
            (Tool::Lmstudio, Some(h)) => vec![
                h.join(".lmstudio/models"),
                h.join(".cache/lm-studio/models"),
            ],
        };
        candidates
            .iter()
            .find(|c| c.is_dir())
            .cloned()
            .ok_or_else(|| StoreError::NoModelsDir {
                tool: self.display_name(),
                looked: candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// A model found in another tool's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub tool: Tool,
    /// What the tool calls it: `llama3.2:3b`, `bartowski/Llama-3.2-1B-GGUF/x.gguf`.
    pub label: String,
    /// The store name it gets unless the user gives one.
    pub name: ModelName,
    /// Its GGUF files, the first one first (several for a split model).
    pub files: Vec<PathBuf>,
    /// The sha256 the tool recorded (Ollama's blob digest), checked when
    /// the file is hashed.
    pub sha256: Option<String>,
}

/// How an adopted model is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// The store's file is a hard link to the tool's file.
    HardLink,
    /// The store records the tool's path; the model is loaded from there.
    Reference,
}

/// What `info.json` records about an adopted model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopted {
    pub tool: Tool,
    /// What the tool calls it.
    pub label: String,
    pub held: Held,
    /// The tool's files as they were hashed, the first one first.
    pub files: Vec<AdoptedFile>,
}

/// One adopted file and the state it was hashed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptedFile {
    /// The tool's path (for a hard link, where the other name is).
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    pub sha256: String,
    /// Modification time when hashed, nanoseconds since the Unix epoch.
    pub modified_ns: u128,
    /// Inode when hashed (0 where the platform has none).
    pub inode: u64,
}

/// The file's (modification time in ns, inode).
pub(super) fn stamp(meta: &fs::Metadata) -> (u128, u64) {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    (modified, inode)
}

/// Turns another tool's name into a store name ([`super::tagged_name`]).
pub fn store_name(base: &str, tag: &str) -> Result<ModelName, StoreError> {
    super::tagged_name(base, tag)
}

/// The models of an Ollama directory, all of them or those named `only`
/// (`NAME` matches every tag, `NAME:TAG` one).
pub fn scan_ollama(dir: &Path, only: Option<&str>) -> Result<Vec<Found>, StoreError> {
    let manifests = dir.join("manifests");
    if !manifests.is_dir() {
        return Err(StoreError::NoModelsDir {
            tool: "Ollama",
            looked: manifests.display().to_string(),
        });
    }
    let mut paths = Vec::new();
    walk(&manifests, 0, &mut paths)?;
    paths.sort();
    let mut found = Vec::new();
    for path in paths {
        let Ok(rel) = path.strip_prefix(&manifests) else {
            continue;
        };
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        // HOST/NAMESPACE.../MODEL/TAG
        if parts.len() < 3 {
            continue;
        }
        let tag = &parts[parts.len() - 1];
        let model = &parts[parts.len() - 2];
        let label = match (parts[0].as_str(), parts[1].as_str()) {
            ("registry.ollama.ai", "library") if parts.len() == 4 => format!("{model}:{tag}"),
            ("registry.ollama.ai", _) => format!("{}:{tag}", parts[1..parts.len() - 1].join("/")),
            _ => format!("{}:{tag}", parts[..parts.len() - 1].join("/")),
        };
        if let Some(only) = only {
            let base = label.split(':').next().unwrap_or(&label);
            let matches = if only.contains(':') {
                label == only
            } else {
                base == only
            };
            if !matches {
                continue;
            }
        }
        let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        let bad = |reason: String| StoreError::OllamaManifest {
            path: path.clone(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let layer = json["layers"]
            .as_array()
            .and_then(|layers| {
                layers
                    .iter()
                    .find(|l| l["mediaType"] == "application/vnd.ollama.image.model")
            })
            .ok_or_else(|| {
                bad("no layer of media type application/vnd.ollama.image.model".into())
            })?;
        let digest = layer["digest"]
            .as_str()
            .ok_or_else(|| bad("the model layer has no digest".into()))?;
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
            .ok_or_else(|| bad(format!("digest {digest:?} is not sha256:<64 hex digits>")))?;
        let blob = dir.join("blobs").join(format!("sha256-{hex}"));
        let short = model.rsplit('/').next().unwrap_or(model);
        // `hf.co/ORG/NAME-GGUF:Q4_K_M` from `ollama pull hf.co/…`.
        let lower = short.to_ascii_lowercase();
        let short = ["-gguf", "_gguf"]
            .iter()
            .find_map(|s| lower.strip_suffix(s))
            .unwrap_or(&lower);
        found.push(Found {
            tool: Tool::Ollama,
            name: store_name(short, tag)?,
            label,
            files: vec![blob],
            sha256: Some(hex.to_string()),
        });
    }
    Ok(found)
}

/// The GGUF models of an LM Studio directory (`PUBLISHER/REPO/*.gguf`), all
/// or those whose repository, `PUBLISHER/REPO` or file name is `only`
/// (ignoring case). Split files are one model; vision projectors are none.
pub fn scan_lmstudio(dir: &Path, only: Option<&str>) -> Result<Vec<Found>, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::NoModelsDir {
            tool: "LM Studio",
            looked: dir.display().to_string(),
        });
    }
    let mut found = Vec::new();
    for publisher in sorted_dirs(dir)? {
        for repo in sorted_dirs(&publisher)? {
            let mut ggufs: Vec<PathBuf> = fs::read_dir(&repo)
                .map_err(io_err("listing", &repo))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().to_ascii_lowercase())
                        .unwrap_or_default();
                    name.ends_with(".gguf") && !name.contains("mmproj") && p.is_file()
                })
                .collect();
            ggufs.sort();
            let publisher_name = file_name(&publisher);
            let repo_name = file_name(&repo);
            for files in group_splits(ggufs) {
                let file = file_name(&files[0]);
                let label = format!("{publisher_name}/{repo_name}/{file}");
                if let Some(only) = only {
                    let only = only.to_ascii_lowercase();
                    let hit = [
                        repo_name.to_ascii_lowercase(),
                        format!("{publisher_name}/{repo_name}").to_ascii_lowercase(),
                        file.to_ascii_lowercase(),
                        label.to_ascii_lowercase(),
                    ]
                    .contains(&only);
                    if !hit {
                        continue;
                    }
                }
                let lower = repo_name.to_ascii_lowercase();
                let base = ["-gguf", "_gguf"]
                    .iter()
                    .find_map(|s| lower.strip_suffix(s))
                    .unwrap_or(&lower);
                let tag = quant_of(&file)
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| file.trim_end_matches(".gguf").to_string());
                found.push(Found {
                    tool: Tool::Lmstudio,
                    name: store_name(base, &tag)?,
                    label,
                    files,
                    sha256: None,
                });
            }
        }
    }
    Ok(found)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err("listing", dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !file_name(p).starts_with('.'))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Single files stay alone; `X-0000i-of-0000N.gguf` files with all N parts
/// become one model in order (an incomplete set is left out: it cannot load).
fn group_splits(files: Vec<PathBuf>) -> Vec<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut splits: std::collections::BTreeMap<(String, u32), Vec<(u32, PathBuf)>> =
        Default::default();
    for f in files {
        let name = file_name(&f);
        match super::hub::split_part(&name) {
            Some((prefix, no, count)) if count > 1 => splits
                .entry((prefix.to_string(), count))
                .or_default()
                .push((no, f)),
            _ => out.push(vec![f]),
        }
    }
    for ((_, count), mut parts) in splits {
        parts.sort();
        if parts.iter().map(|(n, _)| *n).eq(1..=count) {
            out.push(parts.into_iter().map(|(_, f)| f).collect());
        }
    }
    out
}

/// The files under `dir`, to a bounded depth (Ollama's manifests are four
/// levels deep; a symlink loop must not walk forever).
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), StoreError> {
    if depth > 8 {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))?.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&path, depth + 1, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_tools_names_become_store_names() {
        assert_eq!(
            store_name("llama3.2", "3b").unwrap().as_str(),
            "llama3.2:3b"
        );
        assert_eq!(
            store_name("Llama-3.2-1B-Instruct", "Q4_K_M")
                .unwrap()
                .as_str(),
            "llama-3.2-1b-instruct:q4_k_m"
        );
        assert_eq!(
            store_name("a/b c", "latest").unwrap().as_str(),
            "a-b-c:latest"
        );
        assert_eq!(store_name("..x", "y").unwrap().as_str(), "x:y");
    }

    #[test]
    fn split_files_group_only_when_complete() {
        let p = |s: &str| PathBuf::from(s);
        let groups = group_splits(vec![
            p("/m/a.gguf"),
            p("/m/b-00002-of-00002.gguf"),
            p("/m/b-00001-of-00002.gguf"),
            p("/m/c-00001-of-00003.gguf"),
        ]);
        assert_eq!(
            groups,
            vec![
                vec![p("/m/a.gguf")],
                vec![p("/m/b-00001-of-00002.gguf"), p("/m/b-00002-of-00002.gguf")]
            ]
        );
    }
}
