//! Files written whole: a reader sees the old file or the new one, never
//! half of one, whatever happens to the writer.
//!
//! [`write_atomic`] writes the bytes to a temporary file beside the target
//! (same directory, so the same file system), flushes it to disk, then
//! renames it over the target ([`write_atomic_parts`]: of several buffers
//! in a row); [`create_atomic`] does the same but links it
//! into place, so it never replaces a file another process made first.
//! [`Access::Private`] makes the file the owner's alone (mode 0600), for
//! files that hold secrets.
//!
//! ```
//! use locara_platform::fs::{write_atomic, Access};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("daemon.json");
//! write_atomic(&path, b"{}\n", Access::Default)?;
//! write_atomic(&path, b"{\"pid\": 1}\n", Access::Default)?;
//! assert_eq!(std::fs::read(&path)?, b"{\"pid\": 1}\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Who may read and write a file written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// As `std::fs::write` makes a file: mode 0666 less the umask.
    Default,
    /// The owner only, mode 0600: for files that hold secrets.
    Private,
}

/// A file that could not be written, and why.
#[derive(Debug, thiserror::Error)]
#[error("writing {}: {error}", path.display())]
pub struct WriteError {
    /// The file that was to be written (not its temporary file).
    pub path: PathBuf,
    pub error: io::Error,
}

/// Writes `bytes` to `path` whole, replacing any file there: to a new
/// temporary file in the same directory, flushed to disk, then renamed over
/// `path`. The directory must exist. On failure `path` is as it was and no
/// temporary file is left.
pub fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> Result<(), WriteError> {
    write_atomic_parts(path, &[bytes], access)
}

/// [`write_atomic`] of the concatenation of `parts`, without copying them
/// into one buffer first (a large payload behind a small header).
pub fn write_atomic_parts(path: &Path, parts: &[&[u8]], access: Access) -> Result<(), WriteError> {
    let tmp = write_temporary(path, parts, access)?;
    fs::rename(&tmp, path).map_err(|error| {
        let _ = fs::remove_file(&tmp);
        write_error(path, error)
    })
}

/// Writes `bytes` to `path` whole, as [`write_atomic`] does, unless a file is
/// already there: then that file is left as it is. Returns whether this call
/// created `path`. When two processes create the same file at once, the
/// first one wins and the other gets `false`.
pub fn create_atomic(path: &Path, bytes: &[u8], access: Access) -> Result<bool, WriteError> {
    let tmp = write_temporary(path, &[bytes], access)?;
    // A hard link, unlike a rename, never replaces what is there.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(write_error(path, e)),
    }
}

/// Temporary names tried before giving up; only files left by a process
/// that died with our pid can be in the way.
const TEMPORARY_ATTEMPTS: u32 = 64;

/// Writes `bytes` to a new file beside `path`, flushed to disk, and returns
/// its path. Its name starts with a dot and ends with `.tmp`.
fn write_temporary(path: &Path, parts: &[&[u8]], access: Access) -> Result<PathBuf, WriteError> {
    let Some(name) = path.file_name() else {
        return Err(write_error(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        ));
    };
    for _ in 0..TEMPORARY_ATTEMPTS {
        let tmp = path.with_file_name(temporary_name(name));
        let mut file = match options(access).open(&tmp) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(write_error(path, e)),
        };
        return match fill(&mut file, parts) {
            Ok(()) => Ok(tmp),
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&tmp);
                Err(write_error(path, e))
            }
        };
    }
    Err(write_error(
        path,
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "every temporary name beside it is taken",
        ),
    ))
}

fn fill(file: &mut File, parts: &[&[u8]]) -> io::Result<()> {
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()
}

/// `OpenOptions` that create a new file with `access`.
fn options(access: Access) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if access == Access::Private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = access;
    options
}

/// The `<n>` of the next temporary name.
static NEXT_TEMPORARY: AtomicU64 = AtomicU64::new(0);

/// `.<name>.<pid>.<n>.tmp`: no two writers of this process share one, and
/// another process has another pid.
fn temporary_name(name: &OsStr) -> OsString {
    let n = NEXT_TEMPORARY.fetch_add(1, Ordering::Relaxed);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{n}.tmp", std::process::id()));
    tmp
}

fn write_error(path: &Path, error: io::Error) -> WriteError {
    WriteError {
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        write_atomic(&path, b"first\n", Access::Default).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first\n");
        write_atomic(&path, b"second, longer\n", Access::Default).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer\n");
        write_atomic(&path, b"", Access::Default).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
        assert_eq!(names(dir.path()), ["profile.json"]);
        write_atomic_parts(&path, &[b"head ", b"", b"body\n"], Access::Default).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"head body\n");
        assert_eq!(names(dir.path()), ["profile.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_is_the_owners_and_a_default_one_is_as_fs_write_makes_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("admin.token");
        write_atomic(&secret, b"s\n", Access::Private).unwrap();
        assert_eq!(mode(&secret), 0o600);
        // Replacing a file that others may read makes it private again.
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&secret, b"t\n", Access::Private).unwrap();
        assert_eq!(mode(&secret), 0o600);

        let plain = dir.path().join("unit.service");
        write_atomic(&plain, b"[Unit]\n", Access::Default).unwrap();
        let reference = dir.path().join("reference");
        fs::write(&reference, b"").unwrap();
        assert_eq!(mode(&plain), mode(&reference));
        assert_ne!(mode(&plain), 0o600, "a umask of 066 would hide the test");
    }

    #[test]
    fn a_failed_write_names_the_file_and_leaves_it_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A rename cannot replace a directory.
        let taken = dir.path().join("daemon.json");
        fs::create_dir(&taken).unwrap();
        fs::write(taken.join("inside"), b"kept").unwrap();
        let err = write_atomic(&taken, b"{}", Access::Default).unwrap_err();
        assert_eq!(err.path, taken);
        assert!(
            err.to_string()
                .starts_with(&format!("writing {}: ", taken.display())),
            "{err}"
        );
        assert_eq!(names(dir.path()), ["daemon.json"]);
        assert_eq!(fs::read(taken.join("inside")).unwrap(), b"kept");

        let missing = dir.path().join("no-such-dir/profile.json");
        let err = write_atomic(&missing, b"{}", Access::Default).unwrap_err();
        assert_eq!(err.error.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("no-such-dir/profile.json"),
            "{err}"
        );
    }

    #[test]
    fn a_create_keeps_the_file_that_was_there_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        assert!(create_atomic(&path, b"first\n", Access::Private).unwrap());
        assert!(!create_atomic(&path, b"second\n", Access::Private).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first\n");
        assert_eq!(names(dir.path()), ["admin.token"]);
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_stale_temporary_file_is_stepped_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        // The names the next writes of this process would take, as a
        // process that died with this pid might have left them (a few spare:
        // other tests write at the same time).
        let next = NEXT_TEMPORARY.load(Ordering::Relaxed);
        let stale: Vec<String> = (next..next + 8)
            .map(|n| format!(".tokens.json.{}.{n}.tmp", std::process::id()))
            .collect();
        for name in &stale {
            fs::write(dir.path().join(name), b"stale").unwrap();
        }
        write_atomic(&path, b"{}", Access::Private).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        for name in &stale {
            assert_eq!(fs::read(dir.path().join(name)).unwrap(), b"stale");
        }
    }
}
