//! The registry's files under `apps/` in the data directory: the installed
//! manifests and `tokens.json`, read into a cached snapshot and changed
//! under a lock (see the `apps` module for the layout).

use super::token::{has_token_form, Token, TokenHash, APP_TOKEN_PREFIX};
use super::{io_err, AppError, FitError};
use crate::manifest::{parse_manifest, read_manifest};
use locara_core::manifest::{AppId, Manifest, ModelDecl, Speculative};
use locara_platform::fs::{write_atomic, Access};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The registry's directory in the data directory.
const APPS_DIR: &str = "apps";

/// The index of installed apps and their token hashes, in [`APPS_DIR`].
const TOKENS_FILE: &str = "tokens.json";

/// Serialises changes to the registry across processes, in [`APPS_DIR`].
const LOCK_FILE: &str = ".lock";

/// One installed app, as `locara app list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledApp {
    pub id: AppId,
    pub name: String,
    pub version: String,
    /// The models it declares, in manifest order (listed by their
    /// references).
    #[serde(serialize_with = "references")]
    pub models: Vec<ModelDecl>,
    /// Its speculative pair, when it declares one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<Speculative>,
}

fn references<S: serde::Serializer>(models: &[ModelDecl], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(models.iter().map(|m| &m.reference))
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
    token_hash: TokenHash,
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
        tokens.insert(manifest.id.clone(), TokenHash::of(token.as_str()).to_hex());
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
                models: manifest.models.clone(),
                speculative: manifest.speculative.clone(),
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
        *hash = TokenHash::of(token.as_str()).to_hex();
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
        let presented = TokenHash::of(token);
        let snapshot = self.snapshot()?;
        let mut found = None;
        // No early exit: every hash is compared.
        for app in snapshot.apps.values() {
            if app.token_hash.matches(&presented) {
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
            let token_hash = TokenHash::from_hex(&hash).ok_or_else(|| AppError::Damaged {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::admin_token;
    use locara_core::fit::{check_requirement, MachineLimits};
    use sha2::{Digest, Sha256};

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
        let listed: Vec<(String, String, String, Vec<String>)> = registry
            .list()
            .unwrap()
            .into_iter()
            .map(|a| {
                let models = a.models.into_iter().map(|m| m.reference).collect();
                (a.id.to_string(), a.name, a.version, models)
            })
            .collect();
        let row = |id: &str, name: &str, version: &str, models: &[&str]| {
            let models = models.iter().map(|m| m.to_string()).collect();
            (
                id.to_string(),
                name.to_string(),
                version.to_string(),
                models,
            )
        };
        assert_eq!(
            listed,
            [
                row(
                    "com.example.mail",
                    "Mail",
                    "2.1.0",
                    &["gemma3:270m", "smollm2:135m"]
                ),
                row("com.example.notes", "Notes", "1.0.0", &["smollm2:135m"]),
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
}
