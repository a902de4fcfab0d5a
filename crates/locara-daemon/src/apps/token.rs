//! Bearer tokens: their form, their generation from the OS's random
//! source, the sha256 the registry keeps of them and its comparison in
//! constant time; and the admin token's file.

use super::{io_err, AppError};
use hex::FromHex;
use locara_platform::fs::{create_atomic, Access};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use subtle::ConstantTimeEq;

/// What every app token starts with; 64 hex characters follow.
pub const APP_TOKEN_PREFIX: &str = "lca_";

/// What the admin token starts with; 64 hex characters follow.
pub const ADMIN_TOKEN_PREFIX: &str = "lca_admin_";

/// Random bytes in a token: 256 bits, beyond guessing.
const TOKEN_BYTES: usize = 32;

/// The admin token's file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A secret bearer token, `lca_` (or `lca_admin_`) and 64 hex characters.
/// It has no `Display`, so showing one is a deliberate
/// [`as_str`](Token::as_str); `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A new token of 32 bytes from the OS's random source.
    pub(crate) fn generate(prefix: &str) -> Result<Token, AppError> {
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
        TokenHash::of(&self.0).matches(&TokenHash::of(presented))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

/// Whether `text` has the form of a token with `prefix`. The form is public,
/// so checking it early leaks nothing.
pub(super) fn has_token_form(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 2 * TOKEN_BYTES
            && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The sha256 of a token: what the registry keeps instead of the token.
/// It has no `==`: [`TokenHash::matches`] compares in constant time.
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token` (a token, or any text presented as one).
    pub(super) fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// The hash as `tokens.json` stores it: 64 hex characters.
    pub(super) fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The hash from its stored form; `None` unless 64 hex characters.
    pub(super) fn from_hex(text: &str) -> Option<TokenHash> {
        <[u8; 32]>::from_hex(text).ok().map(TokenHash)
    }

    /// Whether the two are equal, in a time that does not depend on where
    /// they first differ.
    pub(super) fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
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
    let kept = read_admin_token(&path)?;
    kept.ok_or_else(|| io_err("reading", &path)(io::ErrorKind::NotFound.into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_of_their_form_and_match_only_themselves() {
        let a = Token::generate(APP_TOKEN_PREFIX).unwrap();
        let b = Token::generate(APP_TOKEN_PREFIX).unwrap();
        assert_ne!(a, b);
        assert!(has_token_form(a.as_str(), APP_TOKEN_PREFIX));
        assert!(!has_token_form(a.as_str(), ADMIN_TOKEN_PREFIX));
        assert!(a.matches(a.as_str()));
        assert!(!a.matches(b.as_str()));
        assert!(!format!("{a:?}").contains(&a.as_str()[APP_TOKEN_PREFIX.len()..]));

        let hash = TokenHash::of(a.as_str());
        let stored = hash.to_hex();
        assert_eq!(stored.len(), 64);
        let read = TokenHash::from_hex(&stored).unwrap();
        assert!(read.matches(&hash));
        assert!(!read.matches(&TokenHash::of(b.as_str())));
        assert!(TokenHash::from_hex(&stored[1..]).is_none());
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

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }
}
