//! The disk tier: finished conversations kept as files when their worker
//! exits, so that a conversation goes on after its model was unloaded and
//! loaded again, prefilling only its new turn.
//!
//! A worker given a directory (the daemon's `<home>/kv-cache/<model
//! sha256>/<kv_type>/`) writes every cached conversation it holds, in its pool or its
//! RAM tier, to a file of its own there when it exits, the most recently
//! used first (so a parent that kills it mid-way loses the oldest ones). At
//! load it indexes the directory, reading headers only; a new conversation
//! whose prompt continues a stored one better than the pool and the RAM
//! tier do reads that file, verifies it and restores it
//! (`llama_state_seq_set_data_ext`). A file that does not match this worker
//! (another model, another llama.cpp build, another K/V type or cache
//! layout, another format version), is truncated or fails its checksum is
//! deleted and reported, and never reaches llama.cpp.
//!
//! The directory holds at most `cap` bytes and never fills the disk past a
//! floor ([`free_floor`]); files go least recently used first (by mtime,
//! which a restore refreshes) to make room ([`plan_room`]). Files are
//! written whole (temporary file, fsync, rename), so a crash mid-write
//! leaves no file that is used; temporary files left by a crash are
//! deleted at the next index once they are [`STALE_TEMPORARY`] old.
//!
//! # File format (version 1)
//!
//! ```text
//! offset    bytes  what
//! 0         8      magic "LOCARAKV"
//! 8         4      format version, u32 little-endian (FORMAT_VERSION)
//! 12        4      header length h, u32 little-endian (at most MAX_HEADER_BYTES)
//! 16        h      the Header as JSON: model sha256, engine, K/V type, cache
//!                  layout, context, parallel, tokens, exact, pos_min,
//!                  payload length p
//! 16+h      p      the payload: llama.cpp's state of the sequence
//! 16+h+p    32     sha256 of bytes 0 .. 16+h+p (header and payload)
//! ```
//!
//! ```
//! use locara_core::KvType;
//! use locara_engine::disk::{decode_file, encode_file, Header, Layout};
//!
//! let header = Header {
//!     model_sha256: "ab".repeat(32),
//!     engine: "llama.cpp (ggml 0.9)".into(),
//!     kv_type: KvType::F16,
//!     layout: Layout::WORKER,
//!     context: 2048,
//!     parallel: 1,
//!     tokens: vec![1, 2, 3],
//!     exact: 3,
//!     pos_min: 0,
//!     payload_bytes: 4,
//! };
//! let (head, checksum) = encode_file(&header, b"K/V!");
//! let file = [&head[..], b"K/V!", &checksum[..]].concat();
//! let (read, range) = decode_file(&file).unwrap();
//! assert_eq!((read, &file[range]), (header, &b"K/V!"[..]));
//! ```

use crate::pool::reusable_prefix;
use locara_core::KvType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The first bytes of every file of the disk tier.
pub const MAGIC: [u8; 8] = *b"LOCARAKV";

/// Version of the file format; a file of another version is deleted.
pub const FORMAT_VERSION: u32 = 1;

/// Extension of the tier's files; other files in the directory are left
/// alone.
pub const EXTENSION: &str = "kv";

/// Magic, version and header length.
const PREAMBLE_BYTES: usize = 16;

/// The sha256 at the end.
const CHECKSUM_BYTES: usize = 32;

/// Largest header accepted, bytes: the token list of the longest context
/// (1M tokens, `locara_core::LARGEST_CONTEXT`) is about 8 MiB of JSON.
pub const MAX_HEADER_BYTES: u32 = 16 << 20;

/// Free disk space the tier always leaves, at least: 1 GiB, or
/// [`FREE_FLOOR_PERCENT`] of the file system if that is more (a cache must
/// never be what fills a disk).
pub const FREE_FLOOR_BYTES: u64 = 1 << 30;

/// See [`FREE_FLOOR_BYTES`].
pub const FREE_FLOOR_PERCENT: u64 = 5;

/// Age after which a temporary file in the directory is a crash's leftover
/// (a write takes seconds; a worker of the same model may be writing now).
pub const STALE_TEMPORARY: Duration = Duration::from_secs(600);

/// The free space the tier leaves on a file system of `total` bytes.
pub fn free_floor(total: u64) -> u64 {
    FREE_FLOOR_BYTES.max(total / 100 * FREE_FLOOR_PERCENT)
}

/// How the worker lays out its K/V cache; a state saved under one layout
/// cannot be read under another. The worker's is always [`Layout::WORKER`];
/// the field exists so that a future layout is refused, not misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Flash attention (it decides whether V is stored transposed).
    pub flash_attention: bool,
    /// One K/V stream for all sequences (`kv_unified`).
    pub kv_unified: bool,
    /// Sliding-window layers hold the whole context (`swa_full`).
    pub swa_full: bool,
}

impl Layout {
    /// What `worker.rs` makes: flash attention, a unified cache, `swa_full` off.
    pub const WORKER: Layout = Layout {
        flash_attention: true,
        kv_unified: true,
        swa_full: false,
    };
}

/// What a file says about the state it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// sha256 of the model file, lowercase hex (from the store; the worker
    /// never hashes a model).
    pub model_sha256: String,
    /// The llama.cpp build that saved the state (`Ready.engine`).
    pub engine: String,
    pub kv_type: KvType,
    pub layout: Layout,
    /// Context per sequence of the worker that saved it, tokens. Recorded,
    /// not required to match: a sequence's state moves between pools of any
    /// size (a resize does just that); one that does not fit is refused by
    /// llama.cpp and prefilled instead.
    pub context: u32,
    /// Sequences of that worker (`n_seq_max`). Recorded, not required to
    /// match: with a unified cache a sequence's state names no stream, and
    /// it is restored into whichever sequence the new request takes.
    pub parallel: u32,
    /// The conversation's tokens, at positions `0..len`.
    pub tokens: Vec<i32>,
    /// Leading tokens whose K/V is what a fresh prefill gives (see
    /// [`crate::pool::reusable_prefix`]).
    pub exact: u32,
    /// Lowest position the sliding-window layers still held.
    pub pos_min: i32,
    /// Bytes of the payload.
    pub payload_bytes: u64,
}

/// What this worker accepts: everything a state depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub model_sha256: String,
    pub engine: String,
    pub kv_type: KvType,
    pub layout: Layout,
}

/// Why a file is not used. Each one deletes the file.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error("not a K/V cache file (no LOCARAKV magic)")]
    Magic,
    #[error("format version {found}, this worker reads version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("unreadable header: {0}")]
    Header(String),
    #[error("saved for another model (sha256 {found})")]
    Model { found: String },
    #[error("saved by another llama.cpp build ({found:?})")]
    Engine { found: String },
    #[error("K/V type {found}, this worker's is {expected}")]
    KvType { found: KvType, expected: KvType },
    #[error("another cache layout ({found:?})")]
    Layout { found: Layout },
    #[error("{found} bytes long where its header makes it {expected}: truncated or extended")]
    Length { expected: u64, found: u64 },
    #[error("checksum mismatch: the payload or header is corrupt")]
    Checksum,
    #[error("its header changed since the directory was indexed")]
    Changed,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The preamble and header of `header`, as written at the start of a file.
pub fn encode_header(header: &Header) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("a header always serializes");
    let mut out = Vec::with_capacity(PREAMBLE_BYTES + json.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// A whole file but its payload: the preamble and header that go before
/// `payload`, and the checksum that goes after it.
pub fn encode_file(header: &Header, payload: &[u8]) -> (Vec<u8>, [u8; CHECKSUM_BYTES]) {
    let head = encode_header(header);
    let mut hash = Sha256::new();
    hash.update(&head);
    hash.update(payload);
    (head, hash.finalize().into())
}

/// The header length from a file's first [`PREAMBLE_BYTES`] bytes.
fn decode_preamble(preamble: &[u8]) -> Result<u32, Reject> {
    if preamble.len() < PREAMBLE_BYTES || preamble[..8] != MAGIC {
        return Err(Reject::Magic);
    }
    let word = |at: usize| u32::from_le_bytes(preamble[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(Reject::Version { found: version });
    }
    let len = word(12);
    if len > MAX_HEADER_BYTES {
        return Err(Reject::Header(format!(
            "{len} bytes, more than the {MAX_HEADER_BYTES} allowed"
        )));
    }
    Ok(len)
}

fn parse_header(json: &[u8]) -> Result<Header, Reject> {
    serde_json::from_slice(json).map_err(|e| Reject::Header(e.to_string()))
}

/// The length a file with this header and a header of `header_len` bytes has.
fn file_len(header_len: u32, payload_bytes: u64) -> u64 {
    (PREAMBLE_BYTES as u64 + u64::from(header_len))
        .saturating_add(payload_bytes)
        .saturating_add(CHECKSUM_BYTES as u64)
}

/// Reads and checks a whole file held in memory: preamble, header, length
/// and checksum. Returns the header and where the payload is.
pub fn decode_file(file: &[u8]) -> Result<(Header, Range<usize>), Reject> {
    let header_len = decode_preamble(file)?;
    let header_end = PREAMBLE_BYTES + header_len as usize;
    let json = file.get(PREAMBLE_BYTES..header_end).ok_or(Reject::Length {
        expected: header_end as u64,
        found: file.len() as u64,
    })?;
    let header = parse_header(json)?;
    let expected = file_len(header_len, header.payload_bytes);
    if expected != file.len() as u64 {
        return Err(Reject::Length {
            expected,
            found: file.len() as u64,
        });
    }
    let body = file.len() - CHECKSUM_BYTES;
    let sum: [u8; CHECKSUM_BYTES] = Sha256::digest(&file[..body]).into();
    if sum[..] != file[body..] {
        return Err(Reject::Checksum);
    }
    Ok((header, header_end..body))
}

impl Header {
    /// Whether a state with this header may be restored by a worker that
    /// expects `e`.
    pub fn check(&self, e: &Expected) -> Result<(), Reject> {
        if self.model_sha256 != e.model_sha256 {
            return Err(Reject::Model {
                found: self.model_sha256.clone(),
            });
        }
        if self.engine != e.engine {
            return Err(Reject::Engine {
                found: self.engine.clone(),
            });
        }
        if self.kv_type != e.kv_type {
            return Err(Reject::KvType {
                found: self.kv_type,
                expected: e.kv_type,
            });
        }
        if self.layout != e.layout {
            return Err(Reject::Layout { found: self.layout });
        }
        Ok(())
    }
}

/// Reads a file's header only, and checks it and the file's length.
pub fn read_header(path: &Path) -> Result<Header, Reject> {
    let mut file = File::open(path)?;
    let found = file.metadata()?.len();
    let mut preamble = [0u8; PREAMBLE_BYTES];
    if found < PREAMBLE_BYTES as u64 {
        // Too short even for the magic: a truncated file, or not ours.
        let mut start = Vec::new();
        file.read_to_end(&mut start)?;
        return Err(if MAGIC.starts_with(&start) || start.starts_with(&MAGIC) {
            Reject::Length {
                expected: PREAMBLE_BYTES as u64,
                found,
            }
        } else {
            Reject::Magic
        });
    }
    file.read_exact(&mut preamble)?;
    let header_len = decode_preamble(&preamble)?;
    if found < PREAMBLE_BYTES as u64 + u64::from(header_len) {
        return Err(Reject::Length {
            expected: PREAMBLE_BYTES as u64 + u64::from(header_len),
            found,
        });
    }
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json)?;
    let header = parse_header(&json)?;
    let expected = file_len(header_len, header.payload_bytes);
    if expected != found {
        return Err(Reject::Length { expected, found });
    }
    Ok(header)
}

/// The file name of a conversation: its tokens' sha256 (the first 128
/// bits, in hex), so the same conversation written twice replaces itself.
pub fn file_name(tokens: &[i32]) -> String {
    let mut hash = Sha256::new();
    for t in tokens {
        hash.update(t.to_le_bytes());
    }
    let digest = hash.finalize();
    let mut name = String::with_capacity(32 + 1 + EXTENSION.len());
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name.push('.');
    name.push_str(EXTENSION);
    name
}

/// A stored file, as the index knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub path: PathBuf,
    pub tokens: Vec<i32>,
    pub exact: usize,
    pub pos_min: i32,
    /// The file's length.
    pub bytes: u64,
    /// Its last use: written or restored (the file's mtime).
    pub used: SystemTime,
    /// Restored by this worker: a conversation it writes that goes on
    /// from it replaces it (see [`DiskTier::write`]).
    pub restored: bool,
}

/// A file that was skipped and deleted, and why.
#[derive(Debug)]
pub struct Rejection {
    pub path: PathBuf,
    pub reason: Reject,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "K/V cache file {} skipped and deleted: {}",
            self.path.display(),
            self.reason
        )
    }
}

/// Which stored files to delete, least recently used first, so that a new
/// file of `new` bytes fits: the tier stays within `cap` bytes and the file
/// system keeps `floor` bytes free (`available` is its free space now;
/// deleting a file frees its bytes). `stored` is each file's (bytes, last
/// use). `None` when it cannot fit even with every file gone; then nothing
/// should be deleted. With `new == 0` it brings the tier within `cap`.
pub fn plan_room(
    stored: &[(u64, SystemTime)],
    new: u64,
    cap: u64,
    available: u64,
    floor: u64,
) -> Option<Vec<usize>> {
    if new > cap {
        return None;
    }
    let mut total: u64 = stored.iter().map(|s| s.0).sum();
    let mut available = available;
    let mut order: Vec<usize> = (0..stored.len()).collect();
    order.sort_by_key(|&i| (stored[i].1, i));
    let mut order = order.into_iter();
    let mut evict = Vec::new();
    while total.saturating_add(new) > cap || available < new.saturating_add(floor) {
        let i = order.next()?;
        total -= stored[i].0;
        available = available.saturating_add(stored[i].0);
        evict.push(i);
    }
    Some(evict)
}

/// The directory of one model's stored conversations, indexed.
#[derive(Debug)]
pub struct DiskTier {
    dir: PathBuf,
    cap: u64,
    expected: Expected,
    entries: Vec<Stored>,
    /// The directory's mtime when it was last listed: a file renamed into
    /// it (another worker of the model writing) changes it.
    listed: Option<SystemTime>,
}

impl DiskTier {
    /// Opens (creating it if needed) and indexes `dir`: reads each file's
    /// header, deletes the files that do not match `expected` (returned),
    /// then the least recently used while over `cap`.
    pub fn open(
        dir: &Path,
        cap: u64,
        expected: Expected,
    ) -> io::Result<(DiskTier, Vec<Rejection>)> {
        // The files hold conversations: the owner's alone, like the files
        // themselves (mode 0600).
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        let mut tier = DiskTier {
            dir: dir.to_path_buf(),
            cap,
            expected,
            entries: Vec::new(),
            listed: None,
        };
        let rejected = tier.rescan();
        let stored: Vec<(u64, SystemTime)> =
            tier.entries.iter().map(|e| (e.bytes, e.used)).collect();
        if let Some(evict) = plan_room(&stored, 0, cap, u64::MAX, 0) {
            tier.remove_all(evict);
        }
        Ok((tier, rejected))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the files must match: the header of a file this worker writes.
    pub fn expected(&self) -> &Expected {
        &self.expected
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    pub fn entries(&self) -> &[Stored] {
        &self.entries
    }

    /// Bytes of the stored files.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Indexes files that appeared since the last listing (another worker
    /// of this model wrote them) and forgets files that are gone. Cheap when
    /// nothing changed: one `stat` of the directory.
    pub fn rescan(&mut self) -> Vec<Rejection> {
        let mtime = fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime == self.listed {
            return Vec::new();
        }
        self.listed = mtime;
        let Ok(listing) = fs::read_dir(&self.dir) else {
            self.entries.clear();
            return Vec::new();
        };
        let mut seen = Vec::new();
        let mut rejected = Vec::new();
        let now = SystemTime::now();
        for item in listing.flatten() {
            let path = item.path();
            let Ok(meta) = item.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let name = item.file_name();
            if is_temporary(&name) {
                let stale = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|age| age >= STALE_TEMPORARY);
                if stale {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            if path.extension() != Some(OsStr::new(EXTENSION)) {
                continue;
            }
            seen.push(path.clone());
            if self.entries.iter().any(|e| e.path == path) {
                continue;
            }
            match read_header(&path).and_then(|h| h.check(&self.expected).map(|()| h)) {
                Ok(h) => self.entries.push(Stored {
                    path,
                    tokens: h.tokens,
                    exact: h.exact as usize,
                    pos_min: h.pos_min,
                    bytes: meta.len(),
                    used: meta.modified().unwrap_or(now),
                    restored: false,
                }),
                Err(reason) => {
                    let _ = fs::remove_file(&path);
                    rejected.push(Rejection { path, reason });
                }
            }
        }
        self.entries.retain(|e| seen.contains(&e.path));
        rejected
    }

    /// The stored conversation `prompt` continues best, if one lets it
    /// reuse more than `at_least` tokens and at least half of what it holds
    /// (the RAM tier's rule, [`crate::pool::RamTier::take_best`]); with the
    /// tokens it may reuse.
    pub fn best(
        &self,
        prompt: &[i32],
        window: Option<u32>,
        at_least: usize,
    ) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    i,
                    reusable_prefix(&e.tokens, e.exact, prompt, window, e.pos_min),
                    e,
                )
            })
            .filter(|&(_, reuse, e)| reuse > at_least && reuse * 2 >= e.tokens.len())
            .max_by_key(|&(_, reuse, e)| (reuse, e.used))
            .map(|(i, reuse, _)| (i, reuse))
    }

    /// Reads entry `i` whole and verifies it: the header again (against
    /// this worker and the index) and the checksum. Returns its payload
    /// (the state) with the entry; a file that fails is deleted and
    /// forgotten.
    pub fn read(&mut self, i: usize) -> Result<(Stored, Vec<u8>), Rejection> {
        let entry = self.entries[i].clone();
        let checked = fs::read(&entry.path)
            .map_err(Reject::from)
            .and_then(|file| {
                let (header, range) = decode_file(&file)?;
                header.check(&self.expected)?;
                if header.tokens != entry.tokens {
                    return Err(Reject::Changed);
                }
                Ok((file, range))
            });
        match checked {
            Ok((mut file, range)) => {
                // The payload in place: drop the checksum, then the header.
                file.truncate(range.end);
                file.drain(..range.start);
                self.touch(i);
                self.entries[i].restored = true;
                Ok((self.entries[i].clone(), file))
            }
            Err(reason) => {
                self.remove_all(vec![i]);
                Err(Rejection {
                    path: entry.path,
                    reason,
                })
            }
        }
    }

    /// Marks entry `i` used now, so it goes last.
    fn touch(&mut self, i: usize) {
        self.set_used(i, SystemTime::now());
    }

    /// Entry `i`'s last use, kept as its file's mtime.
    fn set_used(&mut self, i: usize, used: SystemTime) {
        if let Ok(f) = File::options().write(true).open(&self.entries[i].path) {
            let _ = f.set_modified(used);
        }
        self.entries[i].used = used;
    }

    /// Writes a conversation: makes room (deleting the least recently used
    /// files), then writes its file whole. `used` becomes its mtime;
    /// `available` is the file system's free space, lowered by what was
    /// written. Returns whether it was written (`false`: it cannot fit under
    /// the cap or the free-space floor).
    pub fn write(
        &mut self,
        header: &Header,
        payload: &[u8],
        used: SystemTime,
        space: &mut locara_platform::DiskSpace,
    ) -> Result<bool, locara_platform::fs::WriteError> {
        let path = self.dir.join(file_name(&header.tokens));
        if let Some(i) = self.entries.iter().position(|e| e.path == path) {
            let e = &self.entries[i];
            if e.exact >= header.exact as usize && e.pos_min <= header.pos_min {
                // Stored before (restored and not continued, say), as
                // reusable as this: only its last use changes.
                self.set_used(i, used);
                return Ok(true);
            }
            // Replaced, not counted twice.
            let gone = self.entries.swap_remove(i);
            space.available = space.available.saturating_add(gone.bytes);
        }
        let (head, checksum) = encode_file(header, payload);
        let bytes = (head.len() + payload.len() + checksum.len()) as u64;
        let stored: Vec<(u64, SystemTime)> =
            self.entries.iter().map(|e| (e.bytes, e.used)).collect();
        let Some(evict) = plan_room(
            &stored,
            bytes,
            self.cap,
            space.available,
            free_floor(space.total),
        ) else {
            return Ok(false);
        };
        space.available += evict.iter().map(|&i| self.entries[i].bytes).sum::<u64>();
        self.remove_all(evict);
        locara_platform::fs::write_atomic_parts(
            &path,
            &[&head, payload, &checksum],
            locara_platform::fs::Access::Private,
        )?;
        space.available = space.available.saturating_sub(bytes);
        self.entries.push(Stored {
            path,
            tokens: header.tokens.clone(),
            exact: header.exact as usize,
            pos_min: header.pos_min,
            bytes,
            used,
            restored: false,
        });
        self.set_used(self.entries.len() - 1, used);
        // A conversation restored from a file and gone on since holds all
        // that file did, as reusable: the file goes. (Not for a
        // sliding-window model whose window has moved past it: the old file
        // still serves a prompt that leaves the conversation early.)
        let superseded: Vec<usize> = (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                e.restored
                    && e.tokens.len() < header.tokens.len()
                    && header.tokens.starts_with(&e.tokens)
                    && header.exact as usize >= e.exact
                    && header.pos_min <= e.pos_min
            })
            .collect();
        self.remove_all(superseded);
        Ok(true)
    }

    /// Deletes the file at `path` and forgets it (llama.cpp refused its
    /// state although it passed every check).
    pub fn forget(&mut self, path: &Path) {
        if let Some(i) = self.entries.iter().position(|e| e.path == path) {
            self.remove_all(vec![i]);
        }
    }

    /// Deletes entries by index (any order) and forgets them.
    fn remove_all(&mut self, mut indices: Vec<usize>) {
        indices.sort_unstable();
        for i in indices.into_iter().rev() {
            let gone = self.entries.swap_remove(i);
            let _ = fs::remove_file(&gone.path);
        }
    }
}

/// `locara_platform::fs`'s temporary names: `.<name>.<pid>.<n>.tmp`.
fn is_temporary(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') && name.ends_with(".tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tokens: &[i32], payload_bytes: u64) -> Header {
        Header {
            model_sha256: "a".repeat(64),
            engine: "llama.cpp (ggml 0.9.4)".into(),
            kv_type: KvType::F16,
            layout: Layout::WORKER,
            context: 2048,
            parallel: 4,
            tokens: tokens.to_vec(),
            exact: tokens.len() as u32,
            pos_min: 0,
            payload_bytes,
        }
    }

    fn expected() -> Expected {
        let h = header(&[], 0);
        Expected {
            model_sha256: h.model_sha256,
            engine: h.engine,
            kv_type: h.kv_type,
            layout: h.layout,
        }
    }

    fn file(h: &Header, payload: &[u8]) -> Vec<u8> {
        let (head, sum) = encode_file(h, payload);
        [&head[..], payload, &sum[..]].concat()
    }

    #[test]
    fn a_file_is_preamble_header_payload_checksum() {
        let h = header(&[1, 2, 3], 5);
        let f = file(&h, b"state");
        assert_eq!(&f[..8], b"LOCARAKV");
        assert_eq!(f[8..12], 1u32.to_le_bytes());
        let json_len = u32::from_le_bytes(f[12..16].try_into().unwrap()) as usize;
        let json: serde_json::Value = serde_json::from_slice(&f[16..16 + json_len]).unwrap();
        assert_eq!(json["tokens"], serde_json::json!([1, 2, 3]));
        assert_eq!(json["kv_type"], "f16");
        assert_eq!(json["payload_bytes"], 5);
        assert_eq!(&f[16 + json_len..16 + json_len + 5], b"state");
        assert_eq!(f.len(), 16 + json_len + 5 + 32);
        let sum: [u8; 32] = Sha256::digest(&f[..f.len() - 32]).into();
        assert_eq!(f[f.len() - 32..], sum);
        let (read, range) = decode_file(&f).unwrap();
        assert_eq!(read, h);
        assert_eq!(&f[range], b"state");
    }

    #[test]
    fn damaged_files_are_refused_for_what_is_wrong_with_them() {
        let h = header(&[1, 2, 3], 5);
        let good = file(&h, b"state");
        // One byte short, one byte long.
        let short = &good[..good.len() - 1];
        assert!(matches!(
            decode_file(short),
            Err(Reject::Length { expected, found }) if expected == good.len() as u64 && found + 1 == expected
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(decode_file(&long), Err(Reject::Length { .. })));
        // Cut inside the header.
        assert!(matches!(
            decode_file(&good[..20]),
            Err(Reject::Length { .. })
        ));
        // A bit flipped in the payload, in the header's tokens, in the checksum.
        let payload_at = good.len() - 32 - 3;
        for at in [payload_at, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(
                matches!(decode_file(&bad), Err(Reject::Checksum)),
                "byte {at}"
            );
        }
        let mut bad = good.clone();
        let tokens_at = good.windows(7).position(|w| w == b"[1,2,3]").unwrap();
        bad[tokens_at + 1] = b'7';
        assert!(matches!(decode_file(&bad), Err(Reject::Checksum)));
        // Not JSON any more.
        let mut bad = good.clone();
        bad[16] = b'x';
        assert!(matches!(decode_file(&bad), Err(Reject::Header(_))));
        // Another version, another magic.
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            decode_file(&bad),
            Err(Reject::Version { found: 2 })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(decode_file(&bad), Err(Reject::Magic)));
        assert!(matches!(decode_file(b""), Err(Reject::Magic)));
        // A header length past the limit is refused before it is read.
        let mut bad = good;
        bad[12..16].copy_from_slice(&(MAX_HEADER_BYTES + 1).to_le_bytes());
        assert!(matches!(decode_file(&bad), Err(Reject::Header(_))));
    }

    #[test]
    fn a_header_matches_only_its_model_engine_kv_type_and_layout() {
        let e = expected();
        let h = header(&[1], 1);
        assert!(h.check(&e).is_ok());
        // Context and parallel may differ.
        let other_pool = Header {
            context: 8192,
            parallel: 1,
            ..h.clone()
        };
        assert!(other_pool.check(&e).is_ok());
        let cases = [
            Header {
                model_sha256: "b".repeat(64),
                ..h.clone()
            },
            Header {
                engine: "llama.cpp (ggml 0.9.5)".into(),
                ..h.clone()
            },
            Header {
                kv_type: KvType::Q8_0,
                ..h.clone()
            },
            Header {
                layout: Layout {
                    swa_full: true,
                    ..Layout::WORKER
                },
                ..h.clone()
            },
        ];
        let reasons: Vec<String> = cases
            .iter()
            .map(|c| c.check(&e).unwrap_err().to_string())
            .collect();
        assert!(reasons[0].contains("another model"), "{reasons:?}");
        assert!(
            reasons[1].contains("another llama.cpp build"),
            "{reasons:?}"
        );
        assert_eq!(reasons[2], "K/V type q8_0, this worker's is f16");
        assert!(reasons[3].contains("layout"), "{reasons:?}");
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn room_is_made_least_recently_used_first_within_the_cap() {
        let stored = [(40, at(3)), (30, at(1)), (20, at(2))];
        // 90 stored + 10 fits a cap of 100.
        assert_eq!(plan_room(&stored, 10, 100, u64::MAX, 0), Some(vec![]));
        // + 20 does not: the oldest (30 bytes, t=1) goes.
        assert_eq!(plan_room(&stored, 20, 100, u64::MAX, 0), Some(vec![1]));
        // + 50: the oldest two.
        assert_eq!(plan_room(&stored, 50, 100, u64::MAX, 0), Some(vec![1, 2]));
        // + 100: all of them; + 101: larger than the cap, nothing goes.
        assert_eq!(
            plan_room(&stored, 100, 100, u64::MAX, 0),
            Some(vec![1, 2, 0])
        );
        assert_eq!(plan_room(&stored, 101, 100, u64::MAX, 0), None);
        // Bringing an over-full tier within a lowered cap.
        assert_eq!(plan_room(&stored, 0, 50, u64::MAX, 0), Some(vec![1, 2]));
        assert_eq!(plan_room(&[], 0, 0, 0, 0), Some(vec![]));
    }

    #[test]
    fn room_keeps_the_free_space_floor() {
        let stored = [(40, at(3)), (30, at(1))];
        // 1000 free, floor 900: 100 may be written, 101 needs the oldest file.
        assert_eq!(plan_room(&stored, 100, 10_000, 1000, 900), Some(vec![]));
        assert_eq!(plan_room(&stored, 101, 10_000, 1000, 900), Some(vec![1]));
        // 170 needs both; 171 cannot be had even with both gone.
        assert_eq!(plan_room(&stored, 170, 10_000, 1000, 900), Some(vec![1, 0]));
        assert_eq!(plan_room(&stored, 171, 10_000, 1000, 900), None);
        // A disk already below the floor takes nothing new.
        assert_eq!(plan_room(&[], 1, 10_000, 800, 900), None);
    }

    #[test]
    fn the_floor_is_a_gibibyte_or_five_percent() {
        assert_eq!(free_floor(0), 1 << 30);
        assert_eq!(free_floor(16 << 30), 1 << 30);
        assert_eq!(free_floor(1_000_000_000_000), 50_000_000_000);
    }

    #[test]
    fn file_names_follow_the_tokens() {
        let a = file_name(&[1, 2, 3]);
        assert_eq!(a.len(), 32 + 3);
        assert!(a.ends_with(".kv"));
        assert_eq!(a, file_name(&[1, 2, 3]));
        assert_ne!(a, file_name(&[1, 2, 4]));
        assert_ne!(file_name(&[]), file_name(&[0]));
    }

    fn space() -> locara_platform::DiskSpace {
        locara_platform::DiskSpace {
            total: 1 << 40,
            available: 1 << 39,
        }
    }

    fn write(tier: &mut DiskTier, tokens: &[i32], payload: &[u8], used: u64) -> bool {
        let h = header(tokens, payload.len() as u64);
        tier.write(&h, payload, at(used), &mut space()).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_tier_writes_indexes_finds_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut tier, rejected) = DiskTier::open(dir.path(), 1 << 20, expected()).unwrap();
        assert!(rejected.is_empty() && tier.entries().is_empty());
        assert!(write(&mut tier, &[1, 2, 3, 4], b"four", 10));
        assert!(write(&mut tier, &[1, 2, 9], b"nine", 20));
        // The same conversation again is not written twice...
        assert!(write(&mut tier, &[1, 2, 9], b"NINE", 30));
        assert_eq!(names(dir.path()).len(), 2);
        let path = dir.path().join(file_name(&[1, 2, 9]));
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), at(30));
        // ... unless the stored one is less reusable (it was shifted).
        let h = Header {
            exact: 1,
            ..header(&[1, 2, 9], 4)
        };
        fs::write(&path, file(&h, b"nine")).unwrap();
        tier.entries
            .iter_mut()
            .for_each(|e| e.exact = e.exact.min(1));
        assert!(write(&mut tier, &[1, 2, 9], b"NINE", 30));
        assert_eq!(names(dir.path()).len(), 2);

        // A new worker indexes the headers.
        let (mut tier, rejected) = DiskTier::open(dir.path(), 1 << 20, expected()).unwrap();
        assert!(rejected.is_empty());
        assert_eq!(tier.entries().len(), 2);
        let total: u64 = names(dir.path())
            .iter()
            .map(|n| fs::metadata(dir.path().join(n)).unwrap().len())
            .sum();
        assert_eq!(tier.bytes(), total);
        // [1, 2, 3, 4, 5] continues the first: 4 tokens reused.
        let (i, reuse) = tier.best(&[1, 2, 3, 4, 5], None, 0).unwrap();
        assert_eq!(reuse, 4);
        assert!(tier.best(&[1, 2, 3, 4, 5], None, 4).is_none());
        // Shares [1, 2] with both: not half of the first one.
        assert_eq!(tier.best(&[1, 2, 7, 7], None, 0).map(|b| b.1), Some(2));
        assert!(tier.best(&[5, 5], None, 0).is_none());
        let (entry, payload) = tier.read(i).unwrap();
        assert_eq!(
            (entry.tokens, payload),
            (vec![1, 2, 3, 4], b"four".to_vec())
        );
        // Reading it made it the most recently used.
        assert!(tier.entries()[i].used > at(30));
        let (_, payload) = tier
            .read(tier.best(&[1, 2, 9, 9], None, 0).unwrap().0)
            .unwrap();
        assert_eq!(payload, b"NINE");
    }

    #[test]
    fn a_tier_deletes_what_does_not_match_and_what_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut tier, _) = DiskTier::open(dir.path(), 1 << 20, expected()).unwrap();
        for n in 0..4 {
            assert!(write(&mut tier, &[n, n, n], b"payload", n as u64));
        }
        let path = |n: i32| dir.path().join(file_name(&[n, n, n]));
        // 0: saved with another K/V type; 1: truncated; 2: a bit flipped in
        // its payload (found only when read). 3 stays good.
        let h = Header {
            kv_type: KvType::Q4_0,
            ..header(&[0, 0, 0], 7)
        };
        fs::write(path(0), file(&h, b"payload")).unwrap();
        let len = fs::metadata(path(1)).unwrap().len();
        File::options()
            .write(true)
            .open(path(1))
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let mut bytes = fs::read(path(2)).unwrap();
        let n = bytes.len();
        bytes[n - 33] ^= 0x80;
        fs::write(path(2), bytes).unwrap();
        // Leftovers: a fresh temporary file stays (a writer may be busy),
        // a stale one goes; other files are not ours to touch.
        fs::write(dir.path().join(".x.kv.1.0.tmp"), b"").unwrap();
        let stale = dir.path().join(".y.kv.1.1.tmp");
        fs::write(&stale, b"").unwrap();
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(SystemTime::now() - STALE_TEMPORARY - Duration::from_secs(1))
            .unwrap();
        fs::write(dir.path().join("notes.txt"), b"mine").unwrap();

        let (mut tier, rejected) = DiskTier::open(dir.path(), 1 << 20, expected()).unwrap();
        let reasons: Vec<String> = rejected.iter().map(|r| r.reason.to_string()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons.contains(&"K/V type q4_0, this worker's is f16".to_string()),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("truncated")),
            "{reasons:?}"
        );
        assert!(!path(0).exists() && !path(1).exists());
        assert!(!stale.exists());
        assert!(dir.path().join(".x.kv.1.0.tmp").exists());
        assert!(dir.path().join("notes.txt").exists());
        assert_eq!(tier.entries().len(), 2);
        let (i, _) = tier.best(&[2, 2, 2, 5], None, 0).unwrap();
        let rejection = tier.read(i).unwrap_err();
        assert!(matches!(rejection.reason, Reject::Checksum));
        assert!(rejection.to_string().contains("skipped and deleted"));
        assert!(!path(2).exists());
        assert_eq!(tier.entries().len(), 1);
        assert!(tier.best(&[3, 3, 3, 5], None, 0).is_some());
    }

    #[test]
    fn a_tier_stays_within_its_cap_and_a_lowered_cap_trims_it() {
        let dir = tempfile::tempdir().unwrap();
        let one = file(&header(&[0, 0], 1000), &[0; 1000]).len() as u64;
        let (mut tier, _) = DiskTier::open(dir.path(), 3 * one, expected()).unwrap();
        for n in 0..6 {
            assert!(write(&mut tier, &[n, n], &[0; 1000], n as u64));
            assert!(tier.bytes() <= 3 * one);
        }
        // The three most recent are left.
        let mut left: Vec<i32> = tier.entries().iter().map(|e| e.tokens[0]).collect();
        left.sort();
        assert_eq!(left, [3, 4, 5]);
        assert_eq!(names(dir.path()).len(), 3);
        // Larger than the cap: not written, nothing deleted.
        assert!(!write(&mut tier, &[9], &[0; 4000], 9));
        assert_eq!(tier.entries().len(), 3);
        // A worker with a lower cap trims the directory at load.
        let (tier, _) = DiskTier::open(dir.path(), one, expected()).unwrap();
        assert_eq!(tier.entries().len(), 1);
        assert_eq!(tier.entries()[0].tokens, [5, 5]);
        assert_eq!(names(dir.path()).len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn the_directory_and_its_files_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("kv-cache").join("a".repeat(64));
        let (mut tier, _) = DiskTier::open(&dir, 1 << 20, expected()).unwrap();
        assert!(write(&mut tier, &[1], b"x", 1));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(file_name(&[1]))), 0o600);
    }

    #[test]
    fn a_restored_conversation_that_went_on_replaces_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut tier, _) = DiskTier::open(dir.path(), 1 << 20, expected()).unwrap();
        assert!(write(&mut tier, &[1, 2, 3], b"three", 1));
        assert!(write(&mut tier, &[1, 2], b"two", 2));
        assert!(write(&mut tier, &[7, 8], b"other", 3));
        let (mut tier, _) = DiskTier::open(dir.path(), 1 << 20, expected()).unwrap();
        let (i, _) = tier.best(&[1, 2, 3, 4], None, 0).unwrap();
        tier.read(i).unwrap();
        // [1, 2, 3] went on to [1, 2, 3, 4, 5]: its file goes; [1, 2] was not
        // restored and stays, as does [7, 8].
        assert!(write(&mut tier, &[1, 2, 3, 4, 5], b"five", 4));
        let mut left: Vec<Vec<i32>> = tier.entries().iter().map(|e| e.tokens.clone()).collect();
        left.sort();
        assert_eq!(left, [vec![1, 2], vec![1, 2, 3, 4, 5], vec![7, 8]]);
        assert_eq!(names(dir.path()).len(), 3);
        // A sliding-window conversation whose window moved on keeps the old
        // file: it still serves a prompt that leaves early.
        let (i, _) = tier.best(&[1, 2, 3, 4, 5, 6], None, 0).unwrap();
        tier.read(i).unwrap();
        let moved = Header {
            pos_min: 3,
            ..header(&[1, 2, 3, 4, 5, 6, 7], 5)
        };
        assert!(tier.write(&moved, b"seven", at(5), &mut space()).unwrap());
        assert_eq!(tier.entries().len(), 4);
    }

    #[test]
    fn a_rescan_finds_files_another_worker_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let (mut reader, _) = DiskTier::open(dir.path(), 1 << 20, expected()).unwrap();
        let (mut writer, _) = DiskTier::open(dir.path(), 1 << 20, expected()).unwrap();
        assert!(write(&mut writer, &[4, 5, 6], b"x", 1));
        assert!(reader.rescan().is_empty());
        assert_eq!(reader.entries().len(), 1);
        fs::remove_file(dir.path().join(file_name(&[4, 5, 6]))).unwrap();
        reader.rescan();
        assert!(reader.entries().is_empty());
    }
}
