//! What Linux and macOS do alike, through the same POSIX calls.

use crate::PlatformError;
use std::path::Path;

/// `statvfs(2)` of `path`.
// The field types differ between systems (u32 block counts on macOS, u64
// on Linux); `u64::from` widens either, and is the identity on some.
#[allow(clippy::useless_conversion)]
pub(crate) fn disk_space(path: &Path) -> Result<crate::DiskSpace, PlatformError> {
    use std::os::unix::ffi::OsStrExt;
    let io = |source| PlatformError::Io {
        what: format!("the file system of {}", path.display()),
        source,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call;
    // `statvfs` only writes the plain-data struct it is given.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut st) != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        st
    };
    let block = u64::from(st.f_frsize);
    Ok(crate::DiskSpace {
        total: u64::from(st.f_blocks).saturating_mul(block),
        available: u64::from(st.f_bavail).saturating_mul(block),
    })
}
