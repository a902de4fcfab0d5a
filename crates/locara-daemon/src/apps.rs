//! The app registry: the apps installed from manifests, their tokens, the
//! admin token, and the check that this machine can hold an app.
//!
//! An app is installed from a manifest (docs/ARCHITECTURE.md): `locara app
//! install` validates it, checks it against this machine ([`check_fit`]: a
//! machine too small is told so at install, not at run time) and registers
//! it with a fresh token that is shown once. Under the data directory:
//!
//! * `apps/<id>.toml`: the installed manifest, as it was given;
//! * `apps/tokens.json`: `{ "<id>": "<sha256 hex of the token>" }`; no token
//!   is ever stored in clear;
//! * `admin.token`: the admin token of the management routes ([`admin_token`]).
//!
//! Each file is mode 0600 (in a 0700 `apps/`) and written whole (temporary
//! file, then rename), so a reader sees the old file or the new one, never
//! half of one. `tokens.json` is the index: an app is installed when it has
//! an entry there. Changes are serialised across processes by a lock file.
//!
//! The daemon calls [`AppRegistry::authenticate`] on every request. The
//! registry keeps the parsed files and reads them again only when
//! `tokens.json` was replaced, so `locara app install|remove|rotate-token`
//! takes effect in a running daemon at its next request, without a restart.
//! The `.toml` files are not meant to be edited: install the app again.
//!
//! ```
//! use locara_daemon::apps::AppRegistry;
//!
//! let home = tempfile::tempdir()?;
//! let registry = AppRegistry::open(home.path())?;
//! let text = r#"
//! id = "com.example.notes"
//! name = "Notes"
//! version = "1.0.0"
//! [[models]]
//! ref = "smollm2:135m"
//! "#;
//! // The check is where `locara app install` holds the app to the machine
//! // (`check_fit`); this one lets everything in.
//! let (manifest, token) = registry.install(text, "notes.toml", |_| Ok(()))?;
//! let app = registry.authenticate(token.as_str())?.expect("the app's own token");
//! assert_eq!(app.id, manifest.id);
//! assert!(app.declares("smollm2:135m"));
//!
//! let new_token = registry.rotate_token(&manifest.id)?;
//! assert!(registry.authenticate(token.as_str())?.is_none());
//! assert!(registry.authenticate(new_token.as_str())?.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::manifest::{parse_manifest, read_manifest, ManifestErrors};
use crate::store::{ModelName, Store, StoreError};
use hex::FromHex;
use locara_core::estimate::{self, Backend, EstimateError, EstimateOptions};
use locara_core::fit::{check_requirement, judge_fit};
use locara_core::manifest::{AppId, Manifest, ManifestError};
use locara_core::DEFAULT_CONTEXT;
use locara_platform::fs::{create_atomic, write_atomic, Access, WriteError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use subtle::ConstantTimeEq;

/// The fit check's limits and verdicts, from core (the daemon adds the
/// store and the estimates: [`check_fit`]).
pub use locara_core::fit::{Fit, LimitError, MachineLimits, ModelCost};

/// What every app token starts with; 64 hex characters follow.
pub const APP_TOKEN_PREFIX: &str = "lca_";

/// What the admin token starts with; 64 hex characters follow.
pub const ADMIN_TOKEN_PREFIX: &str = "lca_admin_";

/// Random bytes in a token: 256 bits, beyond guessing.
const TOKEN_BYTES: usize = 32;

/// The admin token's file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The registry's directory in the data directory.
const APPS_DIR: &str = "apps";

/// The index of installed apps and their token hashes, in [`APPS_DIR`].
const TOKENS_FILE: &str = "tokens.json";

/// Serialises changes to the registry across processes, in [`APPS_DIR`].
const LOCK_FILE: &str = ".lock";

/// Errors of the registry and of the admin token.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Every problem of the manifest, one per line (`FILE:LINE: message`).
    #[error(transparent)]
    InvalidManifest(ManifestErrors),
    #[error("{value:?} is not an app id like \"com.example.notes\": {reason}")]
    InvalidId { value: String, reason: String },
    #[error(transparent)]
    DoesNotFit(Box<FitError>),
    #[error("app {0} is already installed; `locara app remove {0}` first to install it again")]
    AlreadyInstalled(AppId),
    #[error("no app {0} is installed; `locara app list` shows the installed apps")]
    NotInstalled(AppId),
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "{path} holds a secret but other users may read or write it (mode {mode:03o}); \
         `chmod 600 {path}` and try again"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot read random bytes for a token from the OS: {source}")]
    Random { source: getrandom::Error },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl AppError {
    /// Stable machine name of this error (the fit check's own for
    /// [`AppError::DoesNotFit`]).
    pub fn kind(&self) -> &'static str {
        match self {
            AppError::InvalidManifest(_) => "invalid_manifest",
            AppError::InvalidId { .. } => "invalid_app_id",
            AppError::DoesNotFit(e) => e.kind(),
            AppError::AlreadyInstalled(_) => "app_exists",
            AppError::NotInstalled(_) => "app_not_found",
            AppError::Damaged { .. } => "apps_damaged",
            AppError::Exposed { .. } => "secret_exposed",
            AppError::Random { .. } => "random_unavailable",
            AppError::Io { .. } => "apps_io",
        }
    }
}

impl From<WriteError> for AppError {
    fn from(e: WriteError) -> AppError {
        AppError::Io {
            what: "writing",
            path: e.path,
            source: e.error,
        }
    }
}

impl From<FitError> for AppError {
    fn from(e: FitError) -> AppError {
        AppError::DoesNotFit(Box::new(e))
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AppError + 'a {
    move |source| AppError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The app id `text` (as a user types it to name an installed app).
pub fn parse_app_id(text: &str) -> Result<AppId, AppError> {
    text.parse().map_err(|e| match e {
        ManifestError::InvalidAppId { value, reason } => AppError::InvalidId { value, reason },
        other => AppError::InvalidId {
            value: text.to_string(),
            reason: other.to_string(),
        },
    })
}

/// Why an app cannot be installed on this machine.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Beyond the machine's memory or budget.
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("{}", not_in_store(app, models))]
    NotInStore { app: AppId, models: Vec<ModelName> },
    #[error("{app} uses {model}, whose file {} is not a valid GGUF model: {source}", path.display())]
    InvalidModel {
        app: AppId,
        model: ModelName,
        path: PathBuf,
        source: Box<locara_gguf::GgufError>,
    },
    #[error("cannot estimate the memory of {model}, which {app} uses: {source}")]
    Estimate {
        app: AppId,
        model: ModelName,
        source: EstimateError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FitError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            FitError::Limit(e) => e.kind(),
            FitError::NotInStore { .. } => "model_not_in_store",
            FitError::InvalidModel { .. } => "invalid_model",
            FitError::Estimate { .. } => "estimate_failed",
            FitError::Store(e) => e.kind(),
        }
    }
}

fn not_in_store(app: &AppId, models: &[ModelName]) -> String {
    let pulls: Vec<String> = models
        .iter()
        .map(|m| format!("`locara pull {m}`"))
        .collect();
    let names: Vec<&str> = models.iter().map(ModelName::as_str).collect();
    let (which, them) = if models.len() == 1 {
        ("which is", "it")
    } else {
        ("which are", "them")
    };
    format!(
        "{app} uses {}, {which} not in the store; pull {them} first: {} \
         (or `locara import FILE --name NAME` for a local file)",
        names.join(", "),
        pulls.join(", ")
    )
}

/// A secret bearer token, `lca_` (or `lca_admin_`) and 64 hex characters.
/// It has no `Display`, so showing one is a deliberate
/// [`as_str`](Token::as_str); `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A new token of 32 bytes from the OS's random source.
    fn generate(prefix: &str) -> Result<Token, AppError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        // The kernel's CSPRNG (getrandom(2) on Linux, getentropy(2) on
        // macOS); it never blocks once the system has booted.
        getrandom::fill(&mut bytes).map_err(|source| AppError::Random { source })?;
        Ok(Token(format!("{prefix}{}", hex::encode(bytes))))
    }

    /// The token in clear, to show once or to send.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token. The comparison takes the same time
    /// wherever the two first differ (it compares hashes in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        sha256(self.0.as_bytes())
            .ct_eq(&sha256(presented.as_bytes()))
            .into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

/// Whether `text` has the form of a token with `prefix`. The form is public,
/// so checking it early leaks nothing.
fn has_token_form(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 2 * TOKEN_BYTES
            && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The sha256 of a token as `tokens.json` stores it: 64 hex characters.
fn token_hash_hex(token: &Token) -> String {
    hex::encode(sha256(token.as_str().as_bytes()))
}

/// One installed app, as `locara app list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledApp {
    pub id: AppId,
    pub name: String,
    pub version: String,
    /// The references of the models it declares, in manifest order.
    pub models: Vec<String>,
}

/// The installed apps under one data directory.
#[derive(Debug)]
pub struct AppRegistry {
    /// `<home>/apps`.
    dir: PathBuf,
    /// The files as last read, with the identity of the `tokens.json` they
    /// came from; `None` until first needed and after this registry's own
    /// changes.
    cache: Mutex<Option<Arc<Snapshot>>>,
}

/// The registry as read at one moment.
#[derive(Debug)]
struct Snapshot {
    /// The `tokens.json` this was read from; `None` when there was none.
    stamp: Option<Stamp>,
    apps: BTreeMap<AppId, Registered>,
}

#[derive(Debug)]
struct Registered {
    /// sha256 of the token.
    token_hash: [u8; 32],
    /// The manifest, or why its file could not be read.
    manifest: Result<Arc<Manifest>, String>,
}

/// What tells one `tokens.json` from the next. Every write is a new file
/// renamed into place, so the inode changes even when the length and a
/// coarse modification time do not (a rotation writes the same length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    changed_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let (inode, changed_ns) = {
            use std::os::unix::fs::MetadataExt;
            (
                meta.ino(),
                i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            )
        };
        #[cfg(not(unix))]
        let (inode, changed_ns) = (0, 0);
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
            changed_ns,
        }
    }
}

impl AppRegistry {
    /// Opens (creating `apps/`, mode 0700, if needed) the registry of the
    /// data directory `home`.
    pub fn open(home: &Path) -> Result<AppRegistry, AppError> {
        let dir = home.join(APPS_DIR);
        create_private_dir(&dir)?;
        Ok(AppRegistry {
            dir,
            cache: Mutex::new(None),
        })
    }

    fn tokens_path(&self) -> PathBuf {
        self.dir.join(TOKENS_FILE)
    }

    fn manifest_path(&self, id: &AppId) -> PathBuf {
        // An app id holds only lowercase letters, digits, hyphens and
        // single dots, and no leading dot: always a plain file name.
        self.dir.join(format!("{id}.toml"))
    }

    /// Validates `manifest_text` (`source_name` names it in errors), runs
    /// `check` on it (the fit check: nothing is installed when it refuses),
    /// and registers the app. Returns the manifest and the app's token; the
    /// token is shown to the caller only here: the registry keeps its hash.
    pub fn install(
        &self,
        manifest_text: &str,
        source_name: &str,
        check: impl FnOnce(&Manifest) -> Result<(), FitError>,
    ) -> Result<(Manifest, Token), AppError> {
        let manifest =
            parse_manifest(manifest_text, source_name).map_err(AppError::InvalidManifest)?;
        // Said before the fit check, which can take a while.
        if self.read_tokens()?.contains_key(&manifest.id) {
            return Err(AppError::AlreadyInstalled(manifest.id));
        }
        check(&manifest)?;

        let _lock = self.lock()?;
        let mut tokens = self.read_tokens()?;
        if tokens.contains_key(&manifest.id) {
            return Err(AppError::AlreadyInstalled(manifest.id));
        }
        let token = Token::generate(APP_TOKEN_PREFIX)?;
        // The manifest first: the app exists once `tokens.json` names it.
        write_atomic(
            &self.manifest_path(&manifest.id),
            manifest_text.as_bytes(),
            Access::Private,
        )?;
        tokens.insert(manifest.id.clone(), token_hash_hex(&token));
        self.write_tokens(&tokens)?;
        Ok((manifest, token))
    }

    /// The installed apps, by id.
    pub fn list(&self) -> Result<Vec<InstalledApp>, AppError> {
        let snapshot = self.snapshot()?;
        let mut out = Vec::with_capacity(snapshot.apps.len());
        for (id, app) in &snapshot.apps {
            let manifest = self.usable(id, app)?;
            out.push(InstalledApp {
                id: id.clone(),
                name: manifest.name.clone(),
                version: manifest.version.clone(),
                models: manifest
                    .models
                    .iter()
                    .map(|m| m.reference.clone())
                    .collect(),
            });
        }
        Ok(out)
    }

    /// The installed manifest of `id`, if that app is installed.
    pub fn manifest(&self, id: &AppId) -> Result<Option<Arc<Manifest>>, AppError> {
        let snapshot = self.snapshot()?;
        match snapshot.apps.get(id) {
            Some(app) => self.usable(id, app).map(Some),
            None => Ok(None),
        }
    }

    /// Uninstalls `id`: its token stops working at once.
    pub fn remove(&self, id: &AppId) -> Result<(), AppError> {
        let _lock = self.lock()?;
        let mut tokens = self.read_tokens()?;
        if tokens.remove(id).is_none() {
            return Err(AppError::NotInstalled(id.clone()));
        }
        // The token first: once it is gone, the app is.
        self.write_tokens(&tokens)?;
        let path = self.manifest_path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Issues a new token for `id`; the old one stops working at once.
    pub fn rotate_token(&self, id: &AppId) -> Result<Token, AppError> {
        let _lock = self.lock()?;
        let mut tokens = self.read_tokens()?;
        let Some(hash) = tokens.get_mut(id) else {
            return Err(AppError::NotInstalled(id.clone()));
        };
        let token = Token::generate(APP_TOKEN_PREFIX)?;
        *hash = token_hash_hex(&token);
        self.write_tokens(&tokens)?;
        Ok(token)
    }

    /// The app whose token `token` is (what follows `Bearer `), or `None`.
    /// The presented token is hashed and compared in constant time with
    /// every stored hash. Cheap enough for every request: the files are read
    /// again only when `tokens.json` changed.
    pub fn authenticate(&self, token: &str) -> Result<Option<Arc<Manifest>>, AppError> {
        if !has_token_form(token, APP_TOKEN_PREFIX) {
            return Ok(None);
        }
        let presented = sha256(token.as_bytes());
        let snapshot = self.snapshot()?;
        let mut found = None;
        // No early exit: every hash is compared.
        for app in snapshot.apps.values() {
            if bool::from(app.token_hash.ct_eq(&presented)) {
                found = app.manifest.as_ref().ok().cloned();
            }
        }
        Ok(found)
    }

    fn usable(&self, id: &AppId, app: &Registered) -> Result<Arc<Manifest>, AppError> {
        app.manifest.clone().map_err(|reason| AppError::Damaged {
            path: self.manifest_path(id),
            reason: format!(
                "{reason}; `locara app remove {id}` removes the app, then install it again"
            ),
        })
    }

    /// The registry as it is now: the cached one, or a fresh read when
    /// `tokens.json` was replaced since.
    fn snapshot(&self) -> Result<Arc<Snapshot>, AppError> {
        let path = self.tokens_path();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // The identity of the file is taken from the handle the text is read
        // from, so the two always agree.
        let file = match File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let stamp = match &file {
            Some(f) => Some(Stamp::of(&f.metadata().map_err(io_err("reading", &path))?)),
            None => None,
        };
        if let Some(cached) = cache.as_ref().filter(|c| c.stamp == stamp) {
            return Ok(Arc::clone(cached));
        }
        let tokens = match file {
            Some(f) => parse_tokens(&path, f)?,
            None => BTreeMap::new(),
        };
        let mut apps = BTreeMap::new();
        for (id, hash) in tokens {
            let token_hash = <[u8; 32]>::from_hex(&hash).map_err(|_| AppError::Damaged {
                path: path.clone(),
                reason: format!("the token hash of {id} is not 64 hex characters"),
            })?;
            let manifest = self.read_installed(&id);
            apps.insert(
                id,
                Registered {
                    token_hash,
                    manifest,
                },
            );
        }
        let snapshot = Arc::new(Snapshot { stamp, apps });
        *cache = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// Reads the installed manifest of `id`; an unusable one makes that app
    /// unusable, not the others.
    fn read_installed(&self, id: &AppId) -> Result<Arc<Manifest>, String> {
        let manifest = read_manifest(&self.manifest_path(id)).map_err(|e| {
            // One line: the first problem is enough to say it is damaged.
            e.to_string().lines().next().unwrap_or_default().to_string()
        })?;
        if &manifest.id != id {
            return Err(format!(
                "it is the manifest of {}, not of {id}",
                manifest.id
            ));
        }
        Ok(Arc::new(manifest))
    }

    /// `tokens.json` as it is on disk (not the cache): what changes start
    /// from.
    fn read_tokens(&self) -> Result<BTreeMap<AppId, String>, AppError> {
        let path = self.tokens_path();
        match File::open(&path) {
            Ok(f) => parse_tokens(&path, f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err("opening", &path)(e)),
        }
    }

    fn write_tokens(&self, tokens: &BTreeMap<AppId, String>) -> Result<(), AppError> {
        let mut text = serde_json::to_string_pretty(tokens).expect("a map of strings serialises");
        text.push('\n');
        let written = write_atomic(&self.tokens_path(), text.as_bytes(), Access::Private);
        // Whatever happened, the next read looks at the file again.
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(written?)
    }

    fn lock(&self) -> Result<File, AppError> {
        let path = self.dir.join(LOCK_FILE);
        let file = private_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("creating lock", &path))?;
        file.lock().map_err(io_err("locking", &path))?;
        Ok(file)
    }
}

fn parse_tokens(path: &Path, mut file: File) -> Result<BTreeMap<AppId, String>, AppError> {
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(io_err("reading", path))?;
    serde_json::from_str(&text).map_err(|e| AppError::Damaged {
        path: path.to_path_buf(),
        reason: format!(
            "{e}; it should map app ids to token hashes. Move it away and install the apps again"
        ),
    })
}

/// `OpenOptions` that create files readable and writable by the owner only.
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

fn create_private_dir(dir: &Path) -> Result<(), AppError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err("creating", dir))
}

/// The admin token of the data directory `home`, which management routes
/// (load, unload, pressure simulate, apps) require. Read from `admin.token`;
/// created there (mode 0600) on first use, by whichever of the daemon or the
/// CLI comes first. A file that other users may read is refused.
pub fn admin_token(home: &Path) -> Result<Token, AppError> {
    let path = home.join(ADMIN_TOKEN_FILE);
    if let Some(token) = read_admin_token(&path)? {
        return Ok(token);
    }
    fs::create_dir_all(home).map_err(io_err("creating", home))?;
    let token = Token::generate(ADMIN_TOKEN_PREFIX)?;
    let text = format!("{}\n", token.as_str());
    // When two processes create the token at once, the first one wins and
    // both use it.
    if create_atomic(&path, text.as_bytes(), Access::Private)? {
        return Ok(token);
    }
    read_admin_token(&path)?.ok_or_else(|| io_err("reading", &path)(io::ErrorKind::NotFound.into()))
}

fn read_admin_token(path: &Path) -> Result<Option<Token>, AppError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", path)(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(io_err("reading", path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(AppError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut text = String::new();
    // A token is 74 bytes; more is not a token file.
    (&mut file)
        .take(256)
        .read_to_string(&mut text)
        .map_err(io_err("reading", path))?;
    let text = text.trim();
    if !has_token_form(text, ADMIN_TOKEN_PREFIX) {
        return Err(AppError::Damaged {
            path: path.to_path_buf(),
            reason: format!(
                "it does not hold an admin token ({ADMIN_TOKEN_PREFIX} and 64 hex characters); \
                 delete it and a new one is made at the next start"
            ),
        });
    }
    Ok(Some(Token(text.to_string())))
}

/// Whether this machine can hold `manifest`'s app: its `requires.memory_gb`
/// within the machine's memory, and every model it declares (both of a
/// speculative pair), at its declared context and K/V type with the app's
/// concurrency, within the budget at once. Every model must be in `store`.
pub fn check_fit(
    manifest: &Manifest,
    store: &Store,
    machine: &MachineLimits,
) -> Result<Fit, FitError> {
    check_requirement(manifest, machine)?;
    let costs = model_costs(manifest, store, &locara_platform::estimate_backend())?;
    Ok(judge_fit(manifest, costs, machine)?)
}

/// The estimate of each model of `manifest`, in manifest order. Names every
/// model missing from the store at once.
pub fn model_costs(
    manifest: &Manifest,
    store: &Store,
    backend: &Backend,
) -> Result<Vec<ModelCost>, FitError> {
    let mut missing = Vec::new();
    let mut entries = Vec::new();
    for decl in &manifest.models {
        // Validated as a store name when the manifest was read.
        let name: ModelName = decl.reference.parse()?;
        match store.get(&name)? {
            Some(entry) => entries.push((decl, name, entry)),
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        return Err(FitError::NotInStore {
            app: manifest.id.clone(),
            models: missing,
        });
    }
    let mut costs = Vec::with_capacity(entries.len());
    for (decl, name, entry) in entries {
        let file =
            locara_gguf::validate_file(&entry.path).map_err(|source| FitError::InvalidModel {
                app: manifest.id.clone(),
                model: name.clone(),
                path: entry.path.clone(),
                source: Box::new(source),
            })?;
        let options = EstimateOptions {
            context: decl.context.unwrap_or(DEFAULT_CONTEXT),
            kv_type: decl.kv_type,
            parallel: manifest.max_concurrency,
            backend: backend.clone(),
            full_window_cache: estimate::ENGINE_FULL_WINDOW_CACHE,
            pool: None,
        };
        let est =
            estimate::estimate(&file.shape(), &options).map_err(|source| FitError::Estimate {
                app: manifest.id.clone(),
                model: name,
                source,
            })?;
        costs.push(ModelCost {
            reference: decl.reference.clone(),
            role: decl.role,
            context: est.context,
            kv_type: decl.kv_type,
            parallel: est.parallel,
            estimate: est.total(),
        });
    }
    Ok(costs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTES: &str = "id = \"com.example.notes\"\nname = \"Notes\"\nversion = \"1.0.0\"\n\
                         [[models]]\nref = \"smollm2:135m\"\ncontext = 4096\n";
    const MAIL: &str = "id = \"com.example.mail\"\nname = \"Mail\"\nversion = \"2.1.0\"\n\
                        [[models]]\nref = \"gemma3:270m\"\n[[models]]\nref = \"smollm2:135m\"\n\
                        role = \"embedding\"\n";

    fn registry() -> (tempfile::TempDir, AppRegistry) {
        let home = tempfile::tempdir().unwrap();
        let registry = AppRegistry::open(home.path()).unwrap();
        (home, registry)
    }

    fn id(s: &str) -> AppId {
        s.parse().unwrap()
    }

    fn install(registry: &AppRegistry, text: &str) -> (Manifest, Token) {
        registry.install(text, "app.toml", |_| Ok(())).unwrap()
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn install_list_rotate_remove() {
        let (_home, registry) = registry();
        assert!(registry.list().unwrap().is_empty());
        let (notes, notes_token) = install(&registry, NOTES);
        let (_, mail_token) = install(&registry, MAIL);
        assert_ne!(notes_token, mail_token);
        assert!(has_token_form(notes_token.as_str(), APP_TOKEN_PREFIX));
        assert_eq!(
            registry.list().unwrap(),
            [
                InstalledApp {
                    id: id("com.example.mail"),
                    name: "Mail".into(),
                    version: "2.1.0".into(),
                    models: vec!["gemma3:270m".into(), "smollm2:135m".into()],
                },
                InstalledApp {
                    id: id("com.example.notes"),
                    name: "Notes".into(),
                    version: "1.0.0".into(),
                    models: vec!["smollm2:135m".into()],
                },
            ]
        );
        assert_eq!(
            *registry.manifest(&notes.id).unwrap().unwrap(),
            notes,
            "the installed manifest reads back as installed"
        );

        let rotated = registry.rotate_token(&notes.id).unwrap();
        assert_ne!(rotated, notes_token);
        registry.remove(&notes.id).unwrap();
        let ids: Vec<AppId> = registry.list().unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, [id("com.example.mail")]);
        assert!(registry.manifest(&notes.id).unwrap().is_none());
        assert!(!registry.dir.join("com.example.notes.toml").exists());
        assert!(registry.authenticate(rotated.as_str()).unwrap().is_none());
        assert!(registry
            .authenticate(mail_token.as_str())
            .unwrap()
            .is_some());

        let err = registry.remove(&notes.id).unwrap_err();
        assert_eq!(err.kind(), "app_not_found");
        assert_eq!(
            err.to_string(),
            "no app com.example.notes is installed; `locara app list` shows the installed apps"
        );
        assert_eq!(
            registry.rotate_token(&notes.id).unwrap_err().kind(),
            "app_not_found"
        );
        // Removed, it can be installed again.
        install(&registry, NOTES);
    }

    #[test]
    fn the_token_file_holds_hashes_only_and_is_the_owners() {
        let (home, registry) = registry();
        let (_, token) = install(&registry, NOTES);
        let tokens_path = home.path().join("apps/tokens.json");
        let text = fs::read_to_string(&tokens_path).unwrap();
        let secret = token.as_str().strip_prefix(APP_TOKEN_PREFIX).unwrap();
        assert!(!text.contains(secret), "{text}");
        let stored: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
        assert_eq!(
            stored["com.example.notes"],
            hex::encode(Sha256::digest(token.as_str().as_bytes()))
        );
        assert!(!format!("{token:?}").contains(secret));
        #[cfg(unix)]
        {
            assert_eq!(mode(&tokens_path), 0o600);
            assert_eq!(
                mode(&home.path().join("apps/com.example.notes.toml")),
                0o600
            );
            assert_eq!(mode(&home.path().join("apps")), 0o700);
        }
        // No temporary file left behind.
        let mut names: Vec<String> = fs::read_dir(home.path().join("apps"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".lock", "com.example.notes.toml", "tokens.json"]);
    }

    #[test]
    fn authenticate_takes_the_apps_token_only() {
        let (home, registry) = registry();
        let (notes, token) = install(&registry, NOTES);
        let app = registry.authenticate(token.as_str()).unwrap().unwrap();
        assert_eq!(app.id, notes.id);

        let mut wrong = token.as_str().to_string();
        let last = if wrong.ends_with('0') { "1" } else { "0" };
        wrong.replace_range(wrong.len() - 1.., last);
        for bad in [
            wrong.as_str(),
            "",
            "lca_",
            &token.as_str()[..token.as_str().len() - 1],
            &format!("{} ", token.as_str()),
            &token.as_str().to_uppercase(),
        ] {
            assert!(registry.authenticate(bad).unwrap().is_none(), "{bad:?}");
        }
        // The admin token is not an app's.
        let admin = admin_token(home.path()).unwrap();
        assert!(registry.authenticate(admin.as_str()).unwrap().is_none());

        // Another process (the CLI) rotates: this one (the daemon) sees it at
        // its next call.
        let cli = AppRegistry::open(home.path()).unwrap();
        let rotated = cli.rotate_token(&notes.id).unwrap();
        assert!(registry.authenticate(token.as_str()).unwrap().is_none());
        assert_eq!(
            registry.authenticate(rotated.as_str()).unwrap().unwrap().id,
            notes.id
        );
        cli.remove(&notes.id).unwrap();
        assert!(registry.authenticate(rotated.as_str()).unwrap().is_none());
    }

    #[test]
    fn a_duplicate_id_is_refused_before_the_fit_check() {
        let (_home, registry) = registry();
        let (_, token) = install(&registry, NOTES);
        let other = NOTES.replace("name = \"Notes\"", "name = \"Other Notes\"");
        let err = registry
            .install(&other, "other.toml", |_| {
                panic!("no fit check for a duplicate")
            })
            .unwrap_err();
        assert_eq!(err.kind(), "app_exists");
        assert_eq!(
            err.to_string(),
            "app com.example.notes is already installed; `locara app remove com.example.notes` \
             first to install it again"
        );
        assert_eq!(registry.list().unwrap()[0].name, "Notes");
        assert!(registry.authenticate(token.as_str()).unwrap().is_some());
    }

    #[test]
    fn a_refused_fit_check_installs_nothing() {
        let (home, registry) = registry();
        let machine = MachineLimits {
            budget: 1 << 30,
            budget_basis: "given".into(),
            physical_memory: 2 << 30,
        };
        let big = format!("{NOTES}[requires]\nmemory_gb = 1000\n");
        let err = registry
            .install(&big, "big.toml", |m| Ok(check_requirement(m, &machine)?))
            .unwrap_err();
        assert_eq!(err.kind(), "memory_requirement_not_met");
        assert_eq!(
            err.to_string(),
            "com.example.notes requires 1000 GiB of memory (`requires.memory_gb`); this machine \
             has 2.0 GiB"
        );
        assert!(registry.list().unwrap().is_empty());
        let names: Vec<_> = fs::read_dir(home.path().join("apps"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn an_app_id_typed_by_a_user_is_checked() {
        assert_eq!(
            parse_app_id("com.example.notes").unwrap(),
            id("com.example.notes")
        );
        let err = parse_app_id("Notes").unwrap_err();
        assert_eq!(err.kind(), "invalid_app_id");
        assert_eq!(
            err.to_string(),
            "\"Notes\" is not an app id like \"com.example.notes\": it needs at least two \
             dot-separated labels"
        );
    }

    #[test]
    fn an_invalid_manifest_names_its_lines() {
        let (_home, registry) = registry();
        let err = registry
            .install(
                "id = \"Notes\"\nname = \"Notes\"\nversion = \"1.0.0\"\n[[models]]\nref = \"a\"\n",
                "notes.toml",
                |_| Ok(()),
            )
            .unwrap_err();
        assert_eq!(err.kind(), "invalid_manifest");
        assert!(err
            .to_string()
            .starts_with("notes.toml:1: `id` = \"Notes\""));
    }

    #[test]
    fn a_damaged_manifest_spoils_its_app_only() {
        let (home, registry) = registry();
        let (notes, notes_token) = install(&registry, NOTES);
        let (_, mail_token) = install(&registry, MAIL);
        fs::write(home.path().join("apps/com.example.notes.toml"), "id = 1\n").unwrap();
        // The cache reloads on a change of tokens.json only: a fresh registry
        // reads the files as they are.
        let registry = AppRegistry::open(home.path()).unwrap();
        assert!(registry
            .authenticate(notes_token.as_str())
            .unwrap()
            .is_none());
        assert!(registry
            .authenticate(mail_token.as_str())
            .unwrap()
            .is_some());
        let err = registry.list().unwrap_err();
        assert_eq!(err.kind(), "apps_damaged");
        assert!(
            err.to_string()
                .contains("`locara app remove com.example.notes`"),
            "{err}"
        );
        registry.remove(&notes.id).unwrap();
        assert_eq!(registry.list().unwrap().len(), 1);

        fs::write(home.path().join("apps/tokens.json"), "[]").unwrap();
        assert_eq!(
            registry
                .authenticate(mail_token.as_str())
                .unwrap_err()
                .kind(),
            "apps_damaged"
        );
    }

    #[test]
    fn a_token_hash_that_is_not_64_hex_characters_is_damage() {
        let (home, registry) = registry();
        let (_, token) = install(&registry, NOTES);
        let tokens_path = home.path().join("apps/tokens.json");
        let good = fs::read_to_string(&tokens_path).unwrap();
        let stored: BTreeMap<String, String> = serde_json::from_str(&good).unwrap();
        let hash = &stored["com.example.notes"];
        for bad in [&hash[1..], &format!("{}g", &hash[1..])] {
            fs::write(&tokens_path, good.replace(hash.as_str(), bad)).unwrap();
            // A fresh registry: an edit in place may keep the cache's stamp.
            let registry = AppRegistry::open(home.path()).unwrap();
            let err = registry.authenticate(token.as_str()).unwrap_err();
            assert_eq!(err.kind(), "apps_damaged");
            assert!(err.to_string().contains("not 64 hex characters"), "{err}");
        }
    }

    #[test]
    fn the_admin_token_is_made_once_and_kept_private() {
        let home = tempfile::tempdir().unwrap();
        let first = admin_token(home.path()).unwrap();
        assert!(has_token_form(first.as_str(), ADMIN_TOKEN_PREFIX));
        assert_eq!(admin_token(home.path()).unwrap(), first);
        assert!(first.matches(first.as_str()));
        assert!(!first.matches(&first.as_str()[1..]));
        let path = home.path().join(ADMIN_TOKEN_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(mode(&path), 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = admin_token(home.path()).unwrap_err();
            assert_eq!(err.kind(), "secret_exposed");
            assert!(err.to_string().contains("(mode 644)"), "{err}");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(&path, "hunter2\n").unwrap();
        assert_eq!(admin_token(home.path()).unwrap_err().kind(), "apps_damaged");
    }

    #[test]
    fn models_missing_from_the_store_are_named_together_with_the_way_to_get_them() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let manifest = parse_manifest(MAIL, "a").unwrap();
        let err = model_costs(&manifest, &store, &Backend::Cpu { repack: vec![] }).unwrap_err();
        assert_eq!(err.kind(), "model_not_in_store");
        assert_eq!(
            err.to_string(),
            "com.example.mail uses gemma3:270m, smollm2:135m, which are not in the store; pull \
             them first: `locara pull gemma3:270m`, `locara pull smollm2:135m` (or `locara \
             import FILE --name NAME` for a local file)"
        );
    }
}
