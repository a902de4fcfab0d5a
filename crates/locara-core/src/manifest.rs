//! App manifests: the validated form of what an app declares it needs, and
//! the pure checks that turn a draft into it.
//!
//! An app is registered from a TOML manifest (docs/ARCHITECTURE.md). Reading the
//! TOML is the daemon's job (`locara_daemon::manifest`): it checks the syntax,
//! the keys and their types, the model names, and fills a [`ManifestDraft`].
//! Everything else that can be said about a manifest without I/O lives here:
//! which keys exist ([`TOP_LEVEL_KEYS`], [`MODEL_KEYS`], ...), which ones are
//! forbidden and why ([`forbidden_key_reason`]), "did you mean" suggestions
//! ([`suggest_key`]), the value rules (app id, name, version, ranges) and the
//! rules across fields (duplicate models, the speculative pair).
//!
//! [`ManifestDraft::validate`] reports every problem it finds, not only the
//! first, each naming its field as a key path (`models[1].context`, indices
//! from 0) that the reader maps back to a line.
//!
//! ```
//! use locara_core::manifest::{Field, ManifestDraft, ModelDraft, Role};
//! use locara_core::KvType;
//!
//! let draft = ManifestDraft {
//!     id: Field::Given("com.example.notes".into()),
//!     name: Field::Given("Notes".into()),
//!     version: Field::Given("1.2.0".into()),
//!     models: Field::Given(vec![ModelDraft {
//!         reference: Field::Given("smollm2:135m".into()),
//!         kv_quality: Field::Given("high".into()),
//!         ..ModelDraft::default()
//!     }]),
//!     ..ManifestDraft::default()
//! };
//! let manifest = draft.validate().unwrap();
//! assert_eq!(manifest.models[0].role, Role::Chat);
//! assert_eq!(manifest.models[0].kv_type, Some(KvType::F16));
//! assert_eq!(manifest.max_concurrency, 1);
//!
//! let bad = ManifestDraft { id: Field::Given("Notes".into()), ..ManifestDraft::default() };
//! let errors = bad.validate().unwrap_err();
//! assert!(errors.iter().any(|e| e.kind() == "invalid_app_id"));
//! assert!(errors.iter().any(|e| e.kind() == "no_models"));
//! ```

use crate::bytes::Bytes;
use crate::load::{KvType, LoadDefaults, LARGEST_CONTEXT, SMALLEST_CONTEXT};
use crate::threads::Priority;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest app id in bytes: the longest DNS name (RFC 1035, 2.3.4).
pub const MAX_APP_ID_LEN: usize = 253;

/// Longest label of an app id in bytes (RFC 1035, 2.3.4).
pub const MAX_APP_ID_LABEL_LEN: usize = 63;

/// Longest app name in characters; long enough for any product name, short
/// enough for one line of `locara apps`.
pub const MAX_APP_NAME_CHARS: usize = 100;

/// Longest version string in bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// Largest `requires.memory_gb` (GiB): no machine Locara runs on has more
/// than 1 TiB of memory, so a bigger value is a typo.
pub const MAX_REQUIRED_MEMORY_GB: f64 = 1024.0;

/// Most requests of one app in flight at once.
pub const MAX_CONCURRENCY: u32 = 64;

/// Requests of one app in flight at once when the manifest says nothing.
/// Each parallel sequence needs its own K/V cache, so concurrency costs
/// memory: an app opts in to more, and the estimate counts it.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 1;

/// Keys of the top level of a manifest.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "id",
    "name",
    "version",
    "models",
    "speculative",
    "requires",
    "max_concurrency",
    "priority",
];

/// Keys of one `[[models]]` table.
pub const MODEL_KEYS: &[&str] = &["ref", "role", "context", "kv_quality", "keep_loaded"];

/// Keys of the `[speculative]` table.
pub const SPECULATIVE_KEYS: &[&str] = &["target", "draft"];

/// Keys of the `[requires]` table.
pub const REQUIRES_KEYS: &[&str] = &["memory_gb"];

/// What a model is for in an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Generates text: chat and completions.
    #[default]
    Chat,
    /// A small model that proposes tokens for a speculative target.
    Draft,
    /// Turns text into vectors.
    Embedding,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Chat, Role::Draft, Role::Embedding];

    /// The name used in manifests and output (`chat`, `draft`, `embedding`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Chat => "chat",
            Role::Draft => "draft",
            Role::Embedding => "embedding",
        }
    }

    /// Drafts and embedders: without them requests still get answers,
    /// slower (no speculative decoding) or not at all for embeddings, but
    /// the chat models people wait on stay until their responses end, so
    /// the pressure ladder unloads these first.
    pub fn is_secondary(self) -> bool {
        !matches!(self, Role::Chat)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The K/V cache quality an app may ask for, by the words of manifests:
/// `standard` leaves the K/V type to the runtime (`None`: its default, f16
/// on a CPU-only machine and q8_0 with a GPU, `Backend::default_kv_type`),
/// `high` is the `f16` opt-in. `q4_0` is the runtime's own choice for tight
/// machines, never an app's.
fn kv_type_for_quality(quality: &str) -> Option<Option<KvType>> {
    match quality {
        "standard" => Some(None),
        "high" => Some(Some(KvType::F16)),
        _ => None,
    }
}

/// A reverse-DNS app id such as `com.example.notes`: at least two labels of
/// lowercase letters, digits and hyphens, each 1 to 63 bytes and neither
/// starting nor ending with a hyphen, 253 bytes in all at most.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppId(String);

impl AppId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment, for tables.
        f.pad(&self.0)
    }
}

impl From<AppId> for String {
    fn from(id: AppId) -> String {
        id.0
    }
}

impl TryFrom<String> for AppId {
    type Error = ManifestError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match app_id_problem(&s) {
            None => Ok(AppId(s)),
            Some(reason) => Err(ManifestError::InvalidAppId { value: s, reason }),
        }
    }
}

impl FromStr for AppId {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AppId::try_from(s.to_string())
    }
}

fn app_id_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("it is empty".into());
    }
    if s.len() > MAX_APP_ID_LEN {
        return Some(format!(
            "it is {} bytes long, more than {MAX_APP_ID_LEN}",
            s.len()
        ));
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return Some("it needs at least two dot-separated labels".into());
    }
    for label in labels {
        if label.is_empty() {
            return Some("it has an empty label (two dots in a row, or a dot at an end)".into());
        }
        if label.len() > MAX_APP_ID_LABEL_LEN {
            return Some(format!(
                "label {label:?} is {} bytes long, more than {MAX_APP_ID_LABEL_LEN}",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Some(format!(
                "label {label:?} has {c:?}; labels hold lowercase letters, digits and hyphens"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label {label:?} starts or ends with a hyphen"));
        }
    }
    None
}

fn app_name_problem(s: &str) -> Option<String> {
    let chars = s.chars().count();
    if s.trim().is_empty() {
        return Some("it is empty".into());
    }
    if chars > MAX_APP_NAME_CHARS {
        return Some(format!(
            "it is {chars} characters long, more than {MAX_APP_NAME_CHARS}"
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Some(format!("it contains the control character {c:?}"));
    }
    None
}

/// Checks a version of the form `MAJOR.MINOR.PATCH` with an optional
/// `-PRERELEASE` (semver 2.0.0 items 2 and 9; build metadata is not taken).
fn version_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("it is empty".into());
    }
    if s.len() > MAX_VERSION_LEN {
        return Some(format!(
            "it is {} bytes long, more than {MAX_VERSION_LEN}",
            s.len()
        ));
    }
    if s.contains('+') {
        return Some("build metadata (`+...`) is not taken".into());
    }
    let (core, pre) = match s.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (s, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    if numbers.len() != 3 {
        return Some(format!(
            "{core:?} has {} dot-separated numbers, not 3",
            numbers.len()
        ));
    }
    for n in numbers {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Some(format!("{n:?} is not a number"));
        }
        if n.len() > 1 && n.starts_with('0') {
            return Some(format!("{n:?} has a leading zero"));
        }
        if n.parse::<u64>().is_err() {
            return Some(format!("{n} is too large"));
        }
    }
    if let Some(pre) = pre {
        for ident in pre.split('.') {
            if ident.is_empty() {
                return Some("the pre-release part has an empty identifier".into());
            }
            if !ident
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Some(format!(
                    "pre-release identifier {ident:?} may hold only ASCII letters, digits and hyphens"
                ));
            }
            if ident.len() > 1
                && ident.starts_with('0')
                && ident.bytes().all(|b| b.is_ascii_digit())
            {
                return Some(format!(
                    "pre-release identifier {ident:?} has a leading zero"
                ));
            }
        }
    }
    None
}

/// One model an app uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelDecl {
    /// The model's name in the store: a catalog name (`locara pull`) or the
    /// name an imported model was given (`locara import`).
    pub reference: String,
    /// What the app uses it for.
    pub role: Role,
    /// Context length in tokens the app wants; `None` leaves it to the
    /// runtime default (8192, clamped to the model's trained context).
    pub context: Option<u32>,
    /// Element type of the K/V cache: `Some(f16)` when the app opted in to
    /// `kv_quality = "high"`, `None` for the runtime's default
    /// (`kv_quality = "standard"`, or unsaid).
    pub kv_type: Option<KvType>,
    /// The app's wish to keep the model loaded when idle (a pin); memory
    /// pressure at critical overrides it.
    pub keep_loaded: bool,
}

impl ModelDecl {
    /// The context (tokens per sequence) and K/V type this model loads with
    /// for the app, given the runtime's `defaults`: what the app declared,
    /// else the runtime's. The install-time fit check and run-time
    /// admission both take their numbers from here, so they agree.
    pub fn load_terms(&self, defaults: &LoadDefaults) -> LoadDefaults {
        LoadDefaults {
            context: self.context.unwrap_or(defaults.context),
            kv_type: self.kv_type.unwrap_or(defaults.kv_type),
        }
    }
}

/// A speculative-decoding pair: `draft` proposes tokens, `target` checks
/// them. Both are references of models in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Speculative {
    /// Reference of the `chat` model that answers.
    pub target: String,
    /// Reference of the `draft` model that proposes.
    pub draft: String,
}

/// What the app says the machine must have.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Requires {
    /// Memory (GiB, the "GB" RAM is sold in) the app needs of the budget;
    /// `None` when it does not say.
    pub memory_gb: Option<f64>,
}

impl Requires {
    /// `memory_gb` in bytes (1 GB = 2^30 bytes, as for machine tiers).
    pub fn memory_bytes(&self) -> Option<Bytes> {
        // In range by validation (0 < gb <= 1024), so the product fits u64.
        self.memory_gb
            .map(|gb| Bytes((gb * (1u64 << 30) as f64).round() as u64))
    }
}

/// A validated app manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub id: AppId,
    /// Name shown to people.
    pub name: String,
    /// `MAJOR.MINOR.PATCH[-PRERELEASE]`.
    pub version: String,
    /// The models the app may use, in manifest order; at least one.
    pub models: Vec<ModelDecl>,
    pub speculative: Option<Speculative>,
    pub requires: Requires,
    /// Requests of this app in flight at once (1 to 64; 1 when unsaid).
    pub max_concurrency: u32,
    /// How its requests weigh against other work for the CPU
    /// (`interactive` when unsaid): background requests run at lower CPU
    /// priority and give way to interactive ones (`crate::threads`).
    pub priority: Priority,
}

/// Models that are budgeted together: a speculative target and its draft run
/// as one, so admission must find room for both or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetUnit<'a> {
    Single(&'a ModelDecl),
    Speculative {
        target: &'a ModelDecl,
        draft: &'a ModelDecl,
    },
}

impl<'a> BudgetUnit<'a> {
    /// The models of this unit: one, or the target then the draft.
    pub fn models(&self) -> Vec<&'a ModelDecl> {
        match *self {
            BudgetUnit::Single(m) => vec![m],
            BudgetUnit::Speculative { target, draft } => vec![target, draft],
        }
    }
}

impl Manifest {
    /// Whether the app declared the model `reference` (in any role): an app
    /// may use only the models its manifest declares.
    pub fn declares(&self, reference: &str) -> bool {
        self.models.iter().any(|m| m.reference == reference)
    }

    /// The declaration of `reference` in `role`, if the manifest has one.
    pub fn model(&self, reference: &str, role: Role) -> Option<&ModelDecl> {
        self.models
            .iter()
            .find(|m| m.reference == reference && m.role == role)
    }

    /// What must be budgeted, in manifest order: each model alone, except
    /// the speculative target and draft, which form one unit at the target's
    /// place.
    pub fn budgeted_models(&self) -> Vec<BudgetUnit<'_>> {
        let pair = self.speculative.as_ref().and_then(|s| {
            Some((
                self.model(&s.target, Role::Chat)?,
                self.model(&s.draft, Role::Draft)?,
            ))
        });
        let mut units = Vec::with_capacity(self.models.len());
        for m in &self.models {
            match pair {
                Some((target, draft)) if std::ptr::eq(m, target) => {
                    units.push(BudgetUnit::Speculative { target, draft })
                }
                Some((_, draft)) if std::ptr::eq(m, draft) => {}
                _ => units.push(BudgetUnit::Single(m)),
            }
        }
        units
    }
}

/// A manifest field as the reader found it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Field<T> {
    /// The key is not there.
    #[default]
    Absent,
    /// The key is there but the reader already reported it (wrong type, bad
    /// model name): validation skips it and every rule that needs it, so one
    /// mistake gives one error.
    Invalid,
    /// The key and its value.
    Given(T),
}

impl<T> Field<T> {
    fn given(&self) -> Option<&T> {
        match self {
            Field::Given(v) => Some(v),
            Field::Absent | Field::Invalid => None,
        }
    }
}

/// The fields of one `[[models]]` table, typed but not yet checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelDraft {
    /// `ref`: a model name the reader has already checked.
    pub reference: Field<String>,
    pub role: Field<String>,
    pub context: Field<i64>,
    pub kv_quality: Field<String>,
    pub keep_loaded: Field<bool>,
}

/// The fields of `[speculative]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpeculativeDraft {
    pub target: Field<String>,
    pub draft: Field<String>,
}

/// The fields of `[requires]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequiresDraft {
    pub memory_gb: Field<f64>,
}

/// A manifest as read, before the value and cross-field rules.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ManifestDraft {
    pub id: Field<String>,
    pub name: Field<String>,
    pub version: Field<String>,
    pub models: Field<Vec<ModelDraft>>,
    pub speculative: Field<SpeculativeDraft>,
    pub requires: Field<RequiresDraft>,
    pub max_concurrency: Field<i64>,
    pub priority: Field<String>,
}

/// A problem with a manifest. Each one names its field as a key path
/// ([`ManifestError::field`]) and, where there is one, the value and the
/// limit it broke.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("unknown key `{field}`{}", unknown_key_hint(*.suggestion, .allowed))]
    UnknownKey {
        field: String,
        /// A known key that is close to the one written.
        suggestion: Option<&'static str>,
        /// The keys allowed where this one was found.
        allowed: &'static [&'static str],
    },
    #[error("`{field}` is not allowed: {reason}")]
    ForbiddenKey { field: String, reason: &'static str },
    #[error("`{field}` must be {expected}, found {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("missing required key `{field}`")]
    MissingKey { field: String },
    #[error("`id` = {value:?} is not a reverse-DNS app id like \"com.example.notes\": {reason}")]
    InvalidAppId { value: String, reason: String },
    #[error("`name` = {value:?} is not a valid app name: {reason}")]
    InvalidAppName { value: String, reason: String },
    #[error(
        "`version` = {value:?} is not a version like \"1.2.0\" or \"2.0.0-beta.1\" (MAJOR.MINOR.PATCH[-PRERELEASE]): {reason}"
    )]
    InvalidVersion { value: String, reason: String },
    #[error("no models declared: add at least one [[models]] table with a `ref`")]
    NoModels,
    #[error(
        "`{field}` = {value:?} is not a model role: expected \"chat\", \"draft\" or \"embedding\""
    )]
    InvalidRole { field: String, value: String },
    #[error(
        "`{field}` = {value:?} is not a K/V quality: expected \"standard\" (q8_0 K/V cache, the default) or \"high\" (f16){}",
        kv_quality_hint(.value)
    )]
    InvalidKvQuality { field: String, value: String },
    #[error(
        "`{field}` = {value} is out of range: a context must be {SMALLEST_CONTEXT} to {LARGEST_CONTEXT} tokens"
    )]
    ContextOutOfRange { field: String, value: i64 },
    #[error("`{field}` declares {reference:?} as a {role} model again (first in `{first}`)")]
    DuplicateModel {
        field: String,
        reference: String,
        role: Role,
        first: String,
    },
    #[error(
        "`requires.memory_gb` = {value} is out of range: it must be more than 0 and at most {MAX_REQUIRED_MEMORY_GB} (GB)"
    )]
    MemoryOutOfRange { value: f64 },
    #[error(
        "`max_concurrency` = {value} is out of range: it must be 1 to {MAX_CONCURRENCY} requests"
    )]
    ConcurrencyOutOfRange { value: i64 },
    #[error(
        "`priority` = {value:?} is not a priority: expected \"interactive\" (the default: someone waits for the answer) or \"background\" (lower CPU priority, gives way to interactive requests)"
    )]
    InvalidPriority { value: String },
    #[error("`{field}` = {reference:?} is not one of the models declared in [[models]]")]
    SpeculativeNotDeclared { field: String, reference: String },
    #[error(
        "`{field}` = {reference:?} is declared with role {found}, but a speculative {} needs a model with role {expected}",
        speculative_end(*.expected)
    )]
    SpeculativeWrongRole {
        field: String,
        reference: String,
        expected: Role,
        found: Role,
    },
    #[error(
        "`speculative.draft` = {reference:?} is the target itself: a draft must be a smaller, different model"
    )]
    SpeculativeSameModel { reference: String },
    #[error(
        "`{field}` = \"draft\" but [speculative] does not name {reference:?} as its draft: a draft model only serves a speculative target"
    )]
    UnpairedDraft { field: String, reference: String },
}

fn unknown_key_hint(suggestion: Option<&str>, allowed: &[&str]) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => format!("; allowed here: {}", allowed.join(", ")),
    }
}

fn speculative_end(expected: Role) -> &'static str {
    match expected {
        Role::Draft => "draft",
        Role::Chat | Role::Embedding => "target",
    }
}

fn kv_quality_hint(value: &str) -> &'static str {
    match value.parse::<KvType>() {
        Ok(KvType::F16) => "; write \"high\" for an f16 K/V cache",
        Ok(KvType::Q8_0) => "; write \"standard\" for a q8_0 K/V cache",
        Ok(KvType::Q4_0) => "; q4_0 is the runtime's choice for tight machines, not an app's",
        Err(_) => "",
    }
}

impl ManifestError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            ManifestError::UnknownKey { .. } => "unknown_key",
            ManifestError::ForbiddenKey { .. } => "forbidden_key",
            ManifestError::WrongType { .. } => "wrong_type",
            ManifestError::MissingKey { .. } => "missing_key",
            ManifestError::InvalidAppId { .. } => "invalid_app_id",
            ManifestError::InvalidAppName { .. } => "invalid_app_name",
            ManifestError::InvalidVersion { .. } => "invalid_version",
            ManifestError::NoModels => "no_models",
            ManifestError::InvalidRole { .. } => "invalid_role",
            ManifestError::InvalidKvQuality { .. } => "invalid_kv_quality",
            ManifestError::ContextOutOfRange { .. } => "context_out_of_range",
            ManifestError::DuplicateModel { .. } => "duplicate_model",
            ManifestError::MemoryOutOfRange { .. } => "memory_out_of_range",
            ManifestError::ConcurrencyOutOfRange { .. } => "concurrency_out_of_range",
            ManifestError::InvalidPriority { .. } => "invalid_priority",
            ManifestError::SpeculativeNotDeclared { .. } => "speculative_not_declared",
            ManifestError::SpeculativeWrongRole { .. } => "speculative_wrong_role",
            ManifestError::SpeculativeSameModel { .. } => "speculative_same_model",
            ManifestError::UnpairedDraft { .. } => "unpaired_draft",
        }
    }

    /// The key path this error is about (`id`, `models[1].context`, indices
    /// from 0), for the reader to find its line.
    pub fn field(&self) -> &str {
        match self {
            ManifestError::UnknownKey { field, .. }
            | ManifestError::ForbiddenKey { field, .. }
            | ManifestError::WrongType { field, .. }
            | ManifestError::MissingKey { field }
            | ManifestError::InvalidRole { field, .. }
            | ManifestError::InvalidKvQuality { field, .. }
            | ManifestError::ContextOutOfRange { field, .. }
            | ManifestError::DuplicateModel { field, .. }
            | ManifestError::SpeculativeNotDeclared { field, .. }
            | ManifestError::SpeculativeWrongRole { field, .. }
            | ManifestError::UnpairedDraft { field, .. } => field,
            ManifestError::InvalidAppId { .. } => "id",
            ManifestError::InvalidAppName { .. } => "name",
            ManifestError::InvalidVersion { .. } => "version",
            ManifestError::NoModels => "models",
            ManifestError::MemoryOutOfRange { .. } => "requires.memory_gb",
            ManifestError::ConcurrencyOutOfRange { .. } => "max_concurrency",
            ManifestError::InvalidPriority { .. } => "priority",
            ManifestError::SpeculativeSameModel { .. } => "speculative.draft",
        }
    }
}

/// Why a key is refused wherever it appears in a manifest, or `None` if it
/// is not one of the forbidden keys. These are the knobs other runtimes
/// (llama.cpp, Ollama, LM Studio) take that would undo docs/ARCHITECTURE.md's defaults:
/// mmap on and mlock off always, CPU threads sized to the performance cores,
/// all layers on the GPU where there is one. Case and `-`/`_` do not matter.
pub fn forbidden_key_reason(key: &str) -> Option<&'static str> {
    const PAGES: &str = "Locara always maps model weights and never locks pages, so the OS can \
                         reclaim them under memory pressure instead of swapping out other apps";
    const THREADS: &str = "the runtime sizes CPU threads to the machine's performance cores; \
                           more threads slow generation and starve the user's other apps";
    const GPU_LAYERS: &str = "the runtime puts every layer on the GPU where there is one and \
                              budgets the memory itself; apps do not choose layer counts";
    const NUMA: &str = "the runtime places threads and memory for the machine; apps do not \
                        choose NUMA policy";
    let key = normalize_key(key);
    match key.as_str() {
        "mmap" | "use_mmap" | "no_mmap" | "disable_mmap" | "mlock" | "use_mlock" | "no_mlock"
        | "lock_memory" | "memory_lock" => Some(PAGES),
        "threads" | "n_threads" | "num_thread" | "num_threads" | "threads_batch"
        | "n_threads_batch" | "cpu_threads" => Some(THREADS),
        "gpu_layers" | "n_gpu_layers" | "ngl" | "num_gpu" | "num_gpu_layers" | "gpu_offload" => {
            Some(GPU_LAYERS)
        }
        "numa" => Some(NUMA),
        _ => None,
    }
}

fn normalize_key(key: &str) -> String {
    key.trim().to_ascii_lowercase().replace('-', "_")
}

/// The allowed key that `key` was probably meant to be: the same key but for
/// case or `-`/`_`, a close spelling (a few edits away), or the name other
/// runtimes use for it (`num_ctx` for `context`, `model` for `ref`).
pub fn suggest_key(key: &str, allowed: &[&'static str]) -> Option<&'static str> {
    // Names other runtimes and config formats use for our keys.
    const ALIASES: &[(&str, &str)] = &[
        ("model", "ref"),
        ("name", "ref"),
        ("reference", "ref"),
        ("model_ref", "ref"),
        ("ctx", "context"),
        ("n_ctx", "context"),
        ("num_ctx", "context"),
        ("ctx_size", "context"),
        ("context_length", "context"),
        ("context_size", "context"),
        ("max_context", "context"),
        ("kv_type", "kv_quality"),
        ("kv_cache", "kv_quality"),
        ("kv_cache_type", "kv_quality"),
        ("cache_type", "kv_quality"),
        ("cache_type_k", "kv_quality"),
        ("type_k", "kv_quality"),
        ("pin", "keep_loaded"),
        ("pinned", "keep_loaded"),
        ("keep_alive", "keep_loaded"),
        ("memory", "memory_gb"),
        ("ram_gb", "memory_gb"),
        ("min_memory_gb", "memory_gb"),
        ("concurrency", "max_concurrency"),
        ("parallel", "max_concurrency"),
        ("n_parallel", "max_concurrency"),
        ("num_parallel", "max_concurrency"),
        ("draft_model", "draft"),
        ("model_draft", "draft"),
        ("main", "target"),
        ("nice", "priority"),
        ("qos", "priority"),
        ("cpu_priority", "priority"),
    ];
    let key = normalize_key(key);
    if let Some(exact) = allowed.iter().find(|a| **a == key) {
        return Some(exact);
    }
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == key) {
        if let Some(a) = allowed.iter().find(|a| *a == to) {
            return Some(a);
        }
    }
    // One edit per three characters, 1 to 3: `kvquality` finds
    // `kv_quality`, but `x` does not find `id`.
    let limit = (key.chars().count() / 3).clamp(1, 3);
    allowed
        .iter()
        .map(|a| (levenshtein(&key, a), *a))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Edit distance (insertions, deletions, substitutions) between two strings,
/// by characters.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The key path of element `index` of array `path`: `models[1]`.
pub fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// The key path of `key` in the table at `path` (`""` for the top level).
/// Keys that are not bare TOML keys are quoted, so the path stays readable:
/// `models[0]."odd key"`.
pub fn key_path(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

impl ManifestDraft {
    /// Checks every value and every rule across fields, and gives the
    /// manifest or all the problems found.
    pub fn validate(self) -> Result<Manifest, Vec<ManifestError>> {
        let mut errors = Vec::new();
        let e = &mut errors;

        let id = required(self.id, "id", e, AppId::try_from);
        let name = required(self.name, "name", e, |value| {
            match app_name_problem(&value) {
                None => Ok(value),
                Some(reason) => Err(ManifestError::InvalidAppName { value, reason }),
            }
        });
        let version = required(self.version, "version", e, |value| {
            match version_problem(&value) {
                None => Ok(value),
                Some(reason) => Err(ManifestError::InvalidVersion { value, reason }),
            }
        });

        let drafts = match self.models {
            Field::Given(models) => {
                if models.is_empty() {
                    e.push(ManifestError::NoModels);
                }
                models
            }
            Field::Absent => {
                e.push(ManifestError::NoModels);
                Vec::new()
            }
            Field::Invalid => Vec::new(),
        };
        // Each model alone: `None` where it had a problem.
        let models: Vec<Option<ModelDecl>> = drafts
            .iter()
            .enumerate()
            .map(|(i, m)| check_model(i, m, e))
            .collect();
        // The cross rules see each model whose ref and role are known.
        let mut known: Vec<(usize, &str, Role)> = Vec::new();
        for (i, m) in drafts.iter().enumerate() {
            let Some(r) = m.reference.given() else {
                continue;
            };
            let Some(role) = role_of(&m.role) else {
                continue;
            };
            match known
                .iter()
                .find(|(_, kr, krole)| *kr == r && *krole == role)
            {
                Some((first, _, _)) => e.push(ManifestError::DuplicateModel {
                    field: index_path("models", i),
                    reference: r.clone(),
                    role,
                    first: index_path("models", *first),
                }),
                None => known.push((i, r, role)),
            }
        }
        let refs_all_known = drafts
            .iter()
            .all(|m| !matches!(m.reference, Field::Invalid));

        let speculative = match &self.speculative {
            Field::Given(s) => check_speculative(s, &known, refs_all_known, e).map(Some),
            Field::Absent => Some(None),
            Field::Invalid => None,
        };
        check_unpaired_drafts(&self.speculative, &known, e);

        let requires = optional(self.requires, Requires::default(), e, |r| {
            let memory_gb = match r.memory_gb {
                Field::Given(gb) if gb > 0.0 && gb <= MAX_REQUIRED_MEMORY_GB => Some(gb),
                Field::Given(gb) => {
                    return Err(Some(ManifestError::MemoryOutOfRange { value: gb }))
                }
                Field::Absent => None,
                Field::Invalid => return Err(None),
            };
            Ok(Requires { memory_gb })
        });
        let max_concurrency =
            optional(
                self.max_concurrency,
                DEFAULT_MAX_CONCURRENCY,
                e,
                |n| match u32::try_from(n) {
                    Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(n),
                    _ => Err(Some(ManifestError::ConcurrencyOutOfRange { value: n })),
                },
            );
        let priority = optional(self.priority, Priority::default(), e, |value| {
            value
                .parse::<Priority>()
                .map_err(|_| Some(ManifestError::InvalidPriority { value }))
        });

        match (
            id,
            name,
            version,
            speculative,
            requires,
            max_concurrency,
            priority,
        ) {
            (
                Some(id),
                Some(name),
                Some(version),
                Some(speculative),
                Some(requires),
                Some(max_concurrency),
                Some(priority),
            ) if errors.is_empty() && !models.is_empty() && models.iter().all(Option::is_some) => {
                Ok(Manifest {
                    id,
                    name,
                    version,
                    models: models.into_iter().flatten().collect(),
                    speculative,
                    requires,
                    max_concurrency,
                    priority,
                })
            }
            // Where no error of ours explains the refusal, a field was
            // `Invalid`: the reader holds its error.
            _ => Err(errors),
        }
    }
}

/// A required field, checked: `None` when it is missing (reported here),
/// invalid (reported by the reader) or fails `check` (reported here).
fn required<T, U>(
    field: Field<T>,
    path: &str,
    errors: &mut Vec<ManifestError>,
    check: impl FnOnce(T) -> Result<U, ManifestError>,
) -> Option<U> {
    match field {
        Field::Given(v) => check(v).map_err(|e| errors.push(e)).ok(),
        Field::Absent => {
            errors.push(missing(path));
            None
        }
        Field::Invalid => None,
    }
}

/// An optional field, checked: `default` when it is absent, `None` when it
/// is invalid or fails `check` (whose error, if any, is reported here).
fn optional<T, U>(
    field: Field<T>,
    default: U,
    errors: &mut Vec<ManifestError>,
    check: impl FnOnce(T) -> Result<U, Option<ManifestError>>,
) -> Option<U> {
    match field {
        Field::Given(v) => check(v).map_err(|e| errors.extend(e)).ok(),
        Field::Absent => Some(default),
        Field::Invalid => None,
    }
}

fn missing(field: &str) -> ManifestError {
    ManifestError::MissingKey {
        field: field.to_string(),
    }
}

/// The role of a model if it is known: given and valid, or absent (chat).
fn role_of(role: &Field<String>) -> Option<Role> {
    match role {
        Field::Given(r) => Role::ALL.into_iter().find(|role| role.as_str() == r),
        Field::Absent => Some(Role::default()),
        Field::Invalid => None,
    }
}

/// The value rules of `models[i]`, alone.
fn check_model(i: usize, m: &ModelDraft, errors: &mut Vec<ManifestError>) -> Option<ModelDecl> {
    let at = |key: &str| key_path(&index_path("models", i), key);
    let reference = required(m.reference.clone(), &at("ref"), errors, Ok);
    let role = optional(m.role.clone(), Role::default(), errors, |value| {
        let role = Role::ALL.into_iter().find(|role| role.as_str() == value);
        role.ok_or(Some(ManifestError::InvalidRole {
            field: at("role"),
            value,
        }))
    });
    let context = optional(
        m.context.clone(),
        None,
        errors,
        |value| match u32::try_from(value) {
            Ok(c) if (SMALLEST_CONTEXT..=LARGEST_CONTEXT).contains(&c) => Ok(Some(c)),
            _ => Err(Some(ManifestError::ContextOutOfRange {
                field: at("context"),
                value,
            })),
        },
    );
    let kv_type = optional(m.kv_quality.clone(), None, errors, |value| {
        kv_type_for_quality(&value).ok_or(Some(ManifestError::InvalidKvQuality {
            field: at("kv_quality"),
            value,
        }))
    });
    let keep_loaded = optional(m.keep_loaded.clone(), false, errors, Ok);
    Some(ModelDecl {
        reference: reference?,
        role: role?,
        context: context?,
        kv_type: kv_type?,
        keep_loaded: keep_loaded?,
    })
}

/// A draft that nothing pairs is memory spent for nothing. The models named
/// in [speculative] are left out: if one is there with the wrong role, the
/// speculative check says so. When the pair's draft is missing or
/// unreadable, its own error says enough.
fn check_unpaired_drafts(
    speculative: &Field<SpeculativeDraft>,
    known: &[(usize, &str, Role)],
    errors: &mut Vec<ManifestError>,
) {
    let named: Vec<&str> = match speculative {
        Field::Absent => Vec::new(),
        Field::Given(s) => match &s.draft {
            Field::Given(d) => std::iter::once(d.as_str())
                .chain(s.target.given().map(String::as_str))
                .collect(),
            Field::Absent | Field::Invalid => return,
        },
        Field::Invalid => return,
    };
    for (i, r, role) in known {
        if *role == Role::Draft && !named.contains(r) {
            errors.push(ManifestError::UnpairedDraft {
                field: key_path(&index_path("models", *i), "role"),
                reference: r.to_string(),
            });
        }
    }
}

/// The rules of `[speculative]`: both ends present, different, declared, the
/// target a `chat` model and the draft a `draft` model. `known` holds the
/// models whose reference and role are known; when some reference could not
/// be read (`refs_all_known` false), "not declared" is not said, since the
/// unreadable one may be it.
fn check_speculative(
    s: &SpeculativeDraft,
    known: &[(usize, &str, Role)],
    refs_all_known: bool,
    errors: &mut Vec<ManifestError>,
) -> Option<Speculative> {
    let target = match &s.target {
        Field::Given(t) => Some(t.as_str()),
        Field::Absent => {
            errors.push(missing("speculative.target"));
            None
        }
        Field::Invalid => None,
    };
    let draft = match &s.draft {
        Field::Given(d) => Some(d.as_str()),
        Field::Absent => {
            errors.push(missing("speculative.draft"));
            None
        }
        Field::Invalid => None,
    };
    if let (Some(t), Some(d)) = (target, draft) {
        if t == d {
            errors.push(ManifestError::SpeculativeSameModel {
                reference: d.to_string(),
            });
            return None;
        }
    }
    let mut ok = target.is_some() && draft.is_some();
    for (field, reference, expected) in [
        ("speculative.target", target, Role::Chat),
        ("speculative.draft", draft, Role::Draft),
    ] {
        let Some(reference) = reference else { continue };
        let roles: Vec<Role> = known
            .iter()
            .filter(|(_, r, _)| *r == reference)
            .map(|(_, _, role)| *role)
            .collect();
        if roles.contains(&expected) {
            continue;
        }
        ok = false;
        match roles.first() {
            Some(found) => errors.push(ManifestError::SpeculativeWrongRole {
                field: field.to_string(),
                reference: reference.to_string(),
                expected,
                found: *found,
            }),
            None if refs_all_known => errors.push(ManifestError::SpeculativeNotDeclared {
                field: field.to_string(),
                reference: reference.to_string(),
            }),
            None => {}
        }
    }
    match (ok, target, draft) {
        (true, Some(target), Some(draft)) => Some(Speculative {
            target: target.to_string(),
            draft: draft.to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(reference: &str, role: &str) -> ModelDraft {
        ModelDraft {
            reference: Field::Given(reference.into()),
            role: Field::Given(role.into()),
            ..ModelDraft::default()
        }
    }

    fn draft() -> ManifestDraft {
        ManifestDraft {
            id: Field::Given("com.example.notes".into()),
            name: Field::Given("Notes".into()),
            version: Field::Given("1.0.0".into()),
            models: Field::Given(vec![model("big:7b", "chat"), model("small:0.5b", "draft")]),
            speculative: Field::Given(SpeculativeDraft {
                target: Field::Given("big:7b".into()),
                draft: Field::Given("small:0.5b".into()),
            }),
            ..ManifestDraft::default()
        }
    }

    fn errors_of(d: ManifestDraft) -> Vec<ManifestError> {
        d.validate().expect_err("the draft should be refused")
    }

    fn only_error(d: ManifestDraft) -> ManifestError {
        let errors = errors_of(d);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().expect("one error")
    }

    #[test]
    fn a_good_draft_gets_defaults() {
        let m = draft().validate().unwrap();
        assert_eq!(m.id.as_str(), "com.example.notes");
        assert_eq!(m.max_concurrency, DEFAULT_MAX_CONCURRENCY);
        assert_eq!(m.requires.memory_gb, None);
        assert_eq!(m.models[0].context, None);
        assert_eq!(m.models[0].kv_type, None);
        assert!(!m.models[0].keep_loaded);
        assert_eq!(m.models[1].role, Role::Draft);
        assert!(m.declares("big:7b"));
        assert!(!m.declares("other:1b"));
        assert!(m.model("small:0.5b", Role::Chat).is_none());
    }

    #[test]
    fn priority_is_interactive_unless_background_is_asked() {
        assert_eq!(draft().validate().unwrap().priority, Priority::Interactive);
        let m = ManifestDraft {
            priority: Field::Given("background".into()),
            ..draft()
        }
        .validate()
        .unwrap();
        assert_eq!(m.priority, Priority::Background);
        let err = only_error(ManifestDraft {
            priority: Field::Given("low".into()),
            ..draft()
        });
        assert_eq!(err.kind(), "invalid_priority");
        assert_eq!(err.field(), "priority");
        let msg = err.to_string();
        assert!(msg.contains("\"low\""), "{msg}");
        assert!(
            msg.contains("\"interactive\"") && msg.contains("\"background\""),
            "{msg}"
        );
        // Other runtimes' words for it find the key.
        assert_eq!(suggest_key("nice", TOP_LEVEL_KEYS), Some("priority"));
        assert_eq!(suggest_key("Priority", TOP_LEVEL_KEYS), Some("priority"));
    }

    #[test]
    fn app_ids_are_reverse_dns() {
        for good in [
            "com.example.notes",
            "io.x",
            "org.my-app.v2",
            "a1.b2.c3",
            &format!("{}.x", "a".repeat(63)),
        ] {
            assert!(good.parse::<AppId>().is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("notes", "two"),
            ("Com.example", "\"Com\" has 'C'"),
            ("com..x", "empty label"),
            ("com.x.", "empty label"),
            ("com.-x", "hyphen"),
            ("com.x-", "hyphen"),
            ("com.ex_ample", "'_'"),
            ("com.exämple", "'ä'"),
            (
                &format!("{}.x", "a".repeat(64)),
                "64 bytes long, more than 63",
            ),
            (&["abcdefg"; 32].join("."), "255 bytes long, more than 253"),
        ] {
            let err = bad.parse::<AppId>().unwrap_err();
            assert_eq!(err.kind(), "invalid_app_id");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn names_are_short_and_printable() {
        for (bad, why) in [
            ("", "empty"),
            ("  ", "empty"),
            ("a\nb", "control character '\\n'"),
            (&"n".repeat(101), "101 characters long, more than 100"),
        ] {
            let err = only_error(ManifestDraft {
                name: Field::Given(bad.into()),
                ..draft()
            });
            assert_eq!(err.kind(), "invalid_app_name");
            assert_eq!(err.field(), "name");
            assert!(err.to_string().contains(why), "{err}");
        }
        // 100 characters of two bytes each is fine: the limit is characters.
        let ok = ManifestDraft {
            name: Field::Given("é".repeat(100)),
            ..draft()
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn versions_are_semver_like() {
        for good in [
            "0.0.0",
            "1.2.3",
            "10.20.30",
            "1.0.0-alpha",
            "2.0.0-beta.1",
            "1.0.0-x-y.0",
        ] {
            let ok = ManifestDraft {
                version: Field::Given(good.into()),
                ..draft()
            };
            assert!(ok.validate().is_ok(), "{good}");
        }
        for (bad, why) in [
            ("1.0", "2 dot-separated numbers, not 3"),
            ("1.0.0.0", "4 dot-separated"),
            ("v1.0.0", "\"v1\" is not a number"),
            ("01.0.0", "leading zero"),
            ("1.0.0-", "empty identifier"),
            ("1.0.0-beta..1", "empty identifier"),
            ("1.0.0-01", "leading zero"),
            ("1.0.0-be_ta", "only ASCII letters"),
            ("1.0.0+build", "build metadata"),
            ("1.0.99999999999999999999", "too large"),
            ("", "empty"),
        ] {
            let err = only_error(ManifestDraft {
                version: Field::Given(bad.into()),
                ..draft()
            });
            assert_eq!(err.kind(), "invalid_version", "{bad}");
            let msg = err.to_string();
            assert!(msg.contains(why), "{bad}: {msg}");
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        }
    }

    #[test]
    fn missing_keys_are_named_and_invalid_ones_are_not_repeated() {
        let errors = errors_of(ManifestDraft::default());
        let fields: Vec<&str> = errors.iter().map(|e| e.field()).collect();
        assert_eq!(fields, ["id", "name", "version", "models"]);
        assert_eq!(errors[3].kind(), "no_models");
        assert_eq!(errors[0].to_string(), "missing required key `id`");

        // The reader reported these already; validation adds nothing.
        let d = ManifestDraft {
            id: Field::Invalid,
            max_concurrency: Field::Invalid,
            ..draft()
        };
        assert_eq!(d.validate(), Err(vec![]));

        let d = ManifestDraft {
            models: Field::Given(vec![ModelDraft::default()]),
            speculative: Field::Absent,
            ..draft()
        };
        let err = only_error(d);
        assert_eq!(err.kind(), "missing_key");
        assert_eq!(err.field(), "models[0].ref");
    }

    #[test]
    fn model_values_are_checked() {
        let mut m = model("big:7b", "chatt");
        m.context = Field::Given(100);
        m.kv_quality = Field::Given("f16".into());
        let errors = errors_of(ManifestDraft {
            models: Field::Given(vec![m]),
            speculative: Field::Absent,
            ..draft()
        });
        let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{msgs:?}");
        assert_eq!(errors[0].kind(), "invalid_role");
        assert!(
            msgs[0].contains("`models[0].role` = \"chatt\""),
            "{}",
            msgs[0]
        );
        assert_eq!(errors[1].kind(), "context_out_of_range");
        assert!(msgs[1].contains("`models[0].context` = 100"), "{}", msgs[1]);
        assert!(msgs[1].contains("256 to 1048576 tokens"), "{}", msgs[1]);
        assert_eq!(errors[2].kind(), "invalid_kv_quality");
        assert!(msgs[2].contains("write \"high\""), "{}", msgs[2]);

        for (context, ok) in [
            (255, false),
            (256, true),
            (1_048_576, true),
            (1_048_577, false),
            (-1, false),
            (i64::MAX, false),
        ] {
            let mut m = model("big:7b", "chat");
            m.context = Field::Given(context);
            let d = ManifestDraft {
                models: Field::Given(vec![m]),
                speculative: Field::Absent,
                ..draft()
            };
            assert_eq!(d.validate().is_ok(), ok, "{context}");
        }
    }

    #[test]
    fn kv_quality_maps_to_kv_types() {
        for (quality, kv) in [("standard", None), ("high", Some(KvType::F16))] {
            let mut m = model("big:7b", "chat");
            m.kv_quality = Field::Given(quality.into());
            m.keep_loaded = Field::Given(true);
            m.context = Field::Given(32768);
            let d = ManifestDraft {
                models: Field::Given(vec![m]),
                speculative: Field::Absent,
                ..draft()
            };
            let got = d.validate().unwrap();
            assert_eq!(got.models[0].kv_type, kv);
            assert!(got.models[0].keep_loaded);
            assert_eq!(got.models[0].context, Some(32768));
        }
    }

    #[test]
    fn the_same_model_in_the_same_role_twice_is_refused() {
        let d = ManifestDraft {
            models: Field::Given(vec![
                model("big:7b", "chat"),
                model("big:7b", "embedding"),
                model("big:7b", "chat"),
            ]),
            speculative: Field::Absent,
            ..draft()
        };
        let err = only_error(d);
        assert_eq!(err.kind(), "duplicate_model");
        assert_eq!(err.field(), "models[2]");
        assert_eq!(
            err.to_string(),
            "`models[2]` declares \"big:7b\" as a chat model again (first in `models[0]`)"
        );
    }

    #[test]
    fn memory_and_concurrency_have_limits() {
        for (gb, ok) in [
            (0.5, true),
            (1024.0, true),
            (0.0, false),
            (-1.0, false),
            (1024.5, false),
            (f64::NAN, false),
            (f64::INFINITY, false),
        ] {
            let d = ManifestDraft {
                requires: Field::Given(RequiresDraft {
                    memory_gb: Field::Given(gb),
                }),
                ..draft()
            };
            match d.validate() {
                Ok(m) => {
                    assert!(ok, "{gb}");
                    assert_eq!(m.requires.memory_gb, Some(gb));
                }
                Err(errors) => {
                    assert!(!ok, "{gb}");
                    assert_eq!(errors.len(), 1);
                    assert_eq!(errors[0].kind(), "memory_out_of_range");
                    let msg = errors[0].to_string();
                    assert!(msg.contains(&format!("= {gb} ")), "{msg}");
                    assert!(msg.contains("at most 1024"), "{msg}");
                }
            }
        }
        let req = Requires {
            memory_gb: Some(1.5),
        };
        assert_eq!(req.memory_bytes(), Some(Bytes(3 << 29)));

        for (n, ok) in [(1, true), (64, true), (0, false), (65, false), (-3, false)] {
            let d = ManifestDraft {
                max_concurrency: Field::Given(n),
                ..draft()
            };
            match d.validate() {
                Ok(m) => {
                    assert!(ok, "{n}");
                    assert_eq!(i64::from(m.max_concurrency), n);
                }
                Err(errors) => {
                    assert!(!ok, "{n}");
                    assert_eq!(errors[0].kind(), "concurrency_out_of_range");
                    assert!(errors[0]
                        .to_string()
                        .contains(&format!("`max_concurrency` = {n} ")));
                    assert!(errors[0].to_string().contains("1 to 64"));
                }
            }
        }
    }

    #[test]
    fn speculative_pairs_a_chat_target_with_a_draft() {
        let m = draft().validate().unwrap();
        assert_eq!(
            m.speculative,
            Some(Speculative {
                target: "big:7b".into(),
                draft: "small:0.5b".into()
            })
        );

        // Not declared.
        let d = ManifestDraft {
            speculative: Field::Given(SpeculativeDraft {
                target: Field::Given("big:7b".into()),
                draft: Field::Given("tiny:0.1b".into()),
            }),
            ..draft()
        };
        let errors = errors_of(d);
        assert_eq!(errors[0].kind(), "speculative_not_declared");
        assert_eq!(errors[0].field(), "speculative.draft");
        assert!(errors[0].to_string().contains("\"tiny:0.1b\""));
        // ... and the declared draft is now unpaired.
        assert_eq!(errors[1].kind(), "unpaired_draft");
        assert_eq!(errors.len(), 2);

        // Roles swapped.
        let d = ManifestDraft {
            models: Field::Given(vec![model("big:7b", "draft"), model("small:0.5b", "chat")]),
            ..draft()
        };
        let errors = errors_of(d);
        let kinds: Vec<&str> = errors.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, ["speculative_wrong_role", "speculative_wrong_role"]);
        assert_eq!(
            errors[0].to_string(),
            "`speculative.target` = \"big:7b\" is declared with role draft, but a speculative target needs a model with role chat"
        );

        // The same model at both ends.
        let d = ManifestDraft {
            speculative: Field::Given(SpeculativeDraft {
                target: Field::Given("big:7b".into()),
                draft: Field::Given("big:7b".into()),
            }),
            ..draft()
        };
        let errors = errors_of(d);
        assert_eq!(errors[0].kind(), "speculative_same_model");
        assert_eq!(errors[0].field(), "speculative.draft");

        // Missing ends.
        let d = ManifestDraft {
            speculative: Field::Given(SpeculativeDraft::default()),
            ..draft()
        };
        let fields: Vec<String> = errors_of(d).iter().map(|e| e.field().to_string()).collect();
        assert_eq!(fields, ["speculative.target", "speculative.draft"]);

        // A draft with no [speculative] at all.
        let d = ManifestDraft {
            speculative: Field::Absent,
            ..draft()
        };
        let err = only_error(d);
        assert_eq!(err.kind(), "unpaired_draft");
        assert_eq!(err.field(), "models[1].role");

        // An unreadable ref may be the one named: no "not declared".
        let mut models = vec![model("big:7b", "chat"), model("small:0.5b", "draft")];
        models[1].reference = Field::Invalid;
        let d = ManifestDraft {
            models: Field::Given(models),
            ..draft()
        };
        assert_eq!(d.validate(), Err(vec![]));
    }

    #[test]
    fn budget_units_pair_target_and_draft() {
        let mut d = draft();
        if let Field::Given(models) = &mut d.models {
            models.insert(0, model("embed:small", "embedding"));
            models.push(model("other:1b", "chat"));
        }
        let m = d.validate().unwrap();
        let units = m.budgeted_models();
        let names: Vec<Vec<&str>> = units
            .iter()
            .map(|u| u.models().iter().map(|m| m.reference.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["embed:small"],
                vec!["big:7b", "small:0.5b"],
                vec!["other:1b"]
            ]
        );
        assert!(matches!(units[1], BudgetUnit::Speculative { .. }));
    }

    #[test]
    fn forbidden_keys_say_why() {
        for key in ["mlock", "no_mmap", "use_mmap", "MMAP", "use-mlock"] {
            let why = forbidden_key_reason(key).unwrap();
            assert!(why.contains("never locks pages"), "{key}: {why}");
        }
        for key in ["threads", "n_threads", "num_thread"] {
            assert!(forbidden_key_reason(key)
                .unwrap()
                .contains("performance cores"));
        }
        for key in ["gpu_layers", "n_gpu_layers", "num_gpu", "ngl"] {
            assert!(forbidden_key_reason(key).unwrap().contains("GPU"));
        }
        assert!(forbidden_key_reason("numa").is_some());
        for key in ["context", "ref", "mmapx", "thread_name"] {
            assert_eq!(forbidden_key_reason(key), None, "{key}");
        }
    }

    #[test]
    fn suggestions_find_near_keys_only() {
        assert_eq!(suggest_key("kvquality", MODEL_KEYS), Some("kv_quality"));
        assert_eq!(suggest_key("Keep-Loaded", MODEL_KEYS), Some("keep_loaded"));
        assert_eq!(suggest_key("rol", MODEL_KEYS), Some("role"));
        assert_eq!(suggest_key("num_ctx", MODEL_KEYS), Some("context"));
        assert_eq!(suggest_key("model", MODEL_KEYS), Some("ref"));
        assert_eq!(
            suggest_key("max_concurency", TOP_LEVEL_KEYS),
            Some("max_concurrency")
        );
        assert_eq!(suggest_key("memorygb", REQUIRES_KEYS), Some("memory_gb"));
        // An alias whose key is not allowed here is not suggested.
        assert_eq!(suggest_key("model", REQUIRES_KEYS), None);
        assert_eq!(suggest_key("x", TOP_LEVEL_KEYS), None);
        assert_eq!(suggest_key("description", TOP_LEVEL_KEYS), None);
    }

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("kvquality", "kv_quality"), 1);
        assert_eq!(levenshtein("ä", "a"), 1);
    }

    #[test]
    fn unknown_key_messages_help() {
        let with = ManifestError::UnknownKey {
            field: "models[1].kvquality".into(),
            suggestion: Some("kv_quality"),
            allowed: MODEL_KEYS,
        };
        assert_eq!(
            with.to_string(),
            "unknown key `models[1].kvquality`; did you mean `kv_quality`?"
        );
        let without = ManifestError::UnknownKey {
            field: "description".into(),
            suggestion: None,
            allowed: TOP_LEVEL_KEYS,
        };
        assert!(without.to_string().ends_with(
            "allowed here: id, name, version, models, speculative, requires, max_concurrency, priority"
        ));
    }

    #[test]
    fn key_paths_quote_odd_keys() {
        assert_eq!(key_path("", "id"), "id");
        assert_eq!(key_path(&index_path("models", 1), "ref"), "models[1].ref");
        assert_eq!(key_path("models[0]", "odd key"), "models[0].\"odd key\"");
        assert_eq!(key_path("", "a.b"), "\"a.b\"");
    }
}
