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
//! One file per concern: `token.rs` (the tokens' form, their generation,
//! the hashes kept of them and their comparison in constant time; the admin
//! token's file), `registry.rs` ([`AppRegistry`]: the files under `apps/`)
//! and `fit.rs` ([`check_fit`]: each model's estimate from the store, held
//! to the machine's limits by `locara_core::fit`).
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

mod fit;
mod registry;
mod token;

pub use fit::{check_fit, model_costs, FitError};
pub use locara_core::fit::{Fit, LimitError, MachineLimits, ModelCost};
pub use registry::{AppRegistry, InstalledApp};
pub use token::{admin_token, Token, ADMIN_TOKEN_FILE, ADMIN_TOKEN_PREFIX, APP_TOKEN_PREFIX};

use crate::manifest::ManifestErrors;
use locara_core::manifest::{AppId, ManifestError};
use locara_platform::fs::WriteError;
use std::io;
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AppId {
        s.parse().unwrap()
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
}
