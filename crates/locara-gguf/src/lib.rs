//! The GGUF guard: a bounded reader and validator that every model file
//! passes before llama.cpp sees it.
//!
//! llama.cpp's GGUF loader has a history of memory-safety bugs on malformed
//! files, and llama.cpp aborts the process on some bad inputs, so Locara
//! checks each file here first, in safe Rust, and refuses a bad one with a
//! message that names what was wrong, where, the value found and the limit.
//!
//! What the guard promises, whatever the file says:
//!
//! * it never panics and never reads past the end of the file;
//! * it reads only the header region (metadata and tensor infos, at most
//!   [`MAX_HEADER_BYTES`]); tensor data is neither read nor mapped, so a
//!   multi-gigabyte model validates in milliseconds;
//! * every count and length is checked against its cap and against the bytes
//!   left in the file before anything is allocated for it;
//! * every size is computed with checked arithmetic: element counts, quantised
//!   byte sizes, offsets, alignment padding;
//! * tensor data ranges are aligned, inside the file, non-overlapping, and
//!   packed the way llama.cpp's own reader requires;
//! * [`validate_file`] opens regular files only (no FIFOs, devices, sockets or
//!   directories) and uses the length the file system reports as the end.
//!
//! On success it returns the header contents ([`GgufFile`]) and the facts a
//! memory estimate needs ([`ModelMetadata`]).
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//!
//! match locara_gguf::validate_file(Path::new("model.gguf")) {
//!     Ok(file) => {
//!         let model = &file.model;
//!         println!(
//!             "{} ({}): {} layers, {} bytes of mapped weights",
//!             model.architecture, model.quantization, model.block_count, model.tensor_data_bytes
//!         );
//!     }
//!     // e.g. `at offset 0x18: metadata key count 4294967295 exceeds the cap 65536`
//!     Err(err) => eprintln!("refusing model.gguf ({}): {err}", err.kind()),
//! }
//! ```
//!
//! The caps are `pub const`s below, each with the reason for its value.
//! Tests build files with `testing::GgufBuilder` (behind the `testing`
//! feature).

#![forbid(unsafe_code)]

mod error;
mod ggml;
mod model;
mod parse;
mod reader;
mod shape;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod value;
pub mod vocab;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

pub use error::GgufError;
pub use ggml::{file_type_name, GgmlType, GgmlTypeIdError};
pub use model::{swa_default, ModelMetadata};
pub use value::{Array, StringArray, Value, ValueType};

/// Most tensors a file may declare. The largest models published as GGUF
/// (Llama 3.1 405B, DeepSeek V3, Kimi K2) have 1,100–2,500 tensors, and
/// vision projectors fewer; 65,536 leaves a wide margin while keeping the
/// tensor table (at most a few MiB in memory) bounded.
pub const MAX_TENSOR_COUNT: u64 = 1 << 16;

/// Most metadata keys a file may declare. Real files have 25–60; 65,536 is
/// far above any converter's output and still bounds the table.
pub const MAX_KV_COUNT: u64 = 1 << 16;

/// Longest metadata key, in bytes: the GGUF specification limits keys to
/// 65,535 bytes.
pub const MAX_KEY_LEN: u64 = (1 << 16) - 1;

/// Longest tensor name, in bytes: ggml stores names in `char[GGML_MAX_NAME]`
/// (64) with a terminating NUL, and llama.cpp refuses longer ones.
pub const MAX_TENSOR_NAME_LEN: u64 = 63;

/// Longest string value, in bytes. The longest strings in real files are chat
/// templates (10–30 KiB); a few tools embed a whole `tokenizer.json` (a few
/// MiB). 16 MiB allows both and still bounds any single allocation; the
/// header cap bounds the sum.
pub const MAX_STRING_LEN: u64 = 16 << 20;

/// Most elements in one metadata array. Vocabularies reach 262,144 tokens
/// (Gemma 3) and merge lists a few hundred thousand entries; 2^24 is 64 times
/// the largest vocabulary. Every array is also checked against the bytes left
/// in the file before it is allocated.
pub const MAX_ARRAY_LEN: u64 = 1 << 24;

/// Deepest nesting of arrays (an array directly under a key is depth 1).
/// The format allows arrays of arrays, but no model uses them and llama.cpp
/// refuses them outright; the cap only bounds the recursion of the reader.
pub const MAX_ARRAY_DEPTH: u32 = 4;

/// Most bytes the header region (everything before the tensor data) may
/// take. Gemma 3's header, with its 262,144-token vocabulary, is 6.5 MB and
/// Llama 3's, with 280,000 merges, about 9 MB; 64 MiB is several times the
/// largest. This bounds the reading time and the memory the metadata takes
/// (at most about three times this, for arrays of empty arrays), whatever
/// the counts in the file say.
pub const MAX_HEADER_BYTES: u64 = 64 << 20;

/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Alignment of the tensor data when `general.alignment` is absent, in bytes
/// (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Largest `general.alignment` accepted, in bytes. Real files use 32 (the
/// default) and occasionally a page size (4 KiB, 16 KiB on Apple Silicon);
/// 1 MiB covers any page size in use, and a larger value would only mean
/// padding waste or a corrupt field.
pub const MAX_ALIGNMENT: u64 = 1 << 20;

/// Most layers (`{arch}.block_count`): llama.cpp's `LLAMA_MAX_LAYERS`; its
/// per-layer tables are arrays of this size.
pub const MAX_BLOCK_COUNT: u32 = 512;

/// Largest `{arch}.embedding_length`. The widest models have 16,384–25,600;
/// 2^20 only rejects corrupt values before they reach a memory estimate.
pub const MAX_EMBEDDING_LENGTH: u32 = 1 << 20;

/// Largest `{arch}.attention.key_length` / `value_length`. Real head sizes
/// are 64–576; 2^16 only rejects corrupt values.
pub const MAX_HEAD_DIM: u32 = 1 << 16;

/// Size of the buffer `validate_file` reads through, in bytes: large enough
/// that a vocabulary of 262,144 small strings costs a hundred or so reads.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// One tensor's description from the tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `"blk.3.attn_q.weight"`.
    pub name: String,
    /// Size of each dimension in elements, innermost (row length) first, as
    /// ggml orders them. Every entry is at least 1; at most [`MAX_DIMS`].
    pub dims: Vec<u64>,
    /// Storage type of the data.
    pub ggml_type: GgmlType,
    /// Absolute offset of the tensor's data from the start of the file, in bytes.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub n_bytes: u64,
    /// Number of elements (the product of `dims`).
    pub n_elements: u64,
}

/// A validated GGUF header.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// GGUF version: 2 or 3.
    pub version: u32,
    /// Alignment of the tensor data in bytes (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute offset of the tensor data section, in bytes: the end of the
    /// tensor-info table rounded up to the alignment (or not rounded when
    /// there are no tensors, as llama.cpp does).
    pub data_offset: u64,
    /// Length of the file in bytes.
    pub file_size: u64,
    /// Metadata keys and values, in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
    /// The model facts derived from the metadata.
    pub model: ModelMetadata,
}

impl GgufFile {
    /// The value of metadata key `key`. A linear scan: files have a few dozen keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Counts and bytes of the tensors, in total and by ggml type.
    pub fn tensor_summary(&self) -> TensorSummary {
        TensorSummary::of(&self.tensors)
    }
}

/// How a file's tensor data divides up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorSummary {
    /// Number of tensors.
    pub count: usize,
    /// Sum of the tensors' data sizes in bytes (the mapped weights).
    pub total_bytes: u64,
    /// One entry per ggml type present, most bytes first.
    pub by_type: Vec<TypeTotals>,
}

/// Tensors of one ggml type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TypeTotals {
    /// The type's name, e.g. `"Q4_K"`.
    pub ggml_type: &'static str,
    /// Number of tensors of this type.
    pub count: usize,
    /// Their data in bytes.
    pub bytes: u64,
}

impl TensorSummary {
    fn of(tensors: &[TensorInfo]) -> TensorSummary {
        let mut by_type: Vec<TypeTotals> = Vec::new();
        let mut total_bytes = 0u64;
        for tensor in tensors {
            // Ranges do not overlap and lie inside the file, so the sums fit;
            // saturating keeps this function total for hand-built inputs.
            total_bytes = total_bytes.saturating_add(tensor.n_bytes);
            let name = tensor.ggml_type.name();
            match by_type.iter_mut().find(|t| t.ggml_type == name) {
                Some(totals) => {
                    totals.count += 1;
                    totals.bytes = totals.bytes.saturating_add(tensor.n_bytes);
                }
                None => by_type.push(TypeTotals {
                    ggml_type: name,
                    count: 1,
                    bytes: tensor.n_bytes,
                }),
            }
        }
        by_type.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.ggml_type.cmp(b.ggml_type)));
        TensorSummary {
            count: tensors.len(),
            total_bytes,
            by_type,
        }
    }
}

/// Validates the GGUF file at `path`.
///
/// Refuses anything but a regular file before opening it (a FIFO would block
/// the open, a device could never end), opens it without blocking, checks
/// again on the open handle, and takes the length from the file system as
/// the end of the file. Reads the header region only.
///
/// Errors from parsing do not repeat the path; callers add it.
pub fn validate_file(path: &Path) -> Result<GgufFile, GgufError> {
    let (reader, len) = open_checked(path)?;
    validate_from(reader, len, Some(path))
}

/// Opens a regular file for the guard: its buffered reader and length.
fn open_checked(path: &Path) -> Result<(BufReader<File>, u64), GgufError> {
    let io_err = |source| GgufError::Io {
        path: Some(path.to_path_buf()),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(io_err)?;
    ensure_regular(path, &metadata)?;
    let file = open_without_blocking(path).map_err(io_err)?;
    // The path may have been swapped between the check and the open.
    let metadata = file.metadata().map_err(io_err)?;
    ensure_regular(path, &metadata)?;
    Ok((
        BufReader::with_capacity(READ_BUFFER_BYTES, file),
        metadata.len(),
    ))
}

/// Validates a split GGUF (`gguf-split`'s `-00001-of-0000N.gguf` files):
/// every part's layout as [`validate_file`] checks it, their numbering
/// (`split.no` 0..N-1 in order, `split.count` N in each), no tensor in two
/// parts, `split.tensors.count` equal to the tensors found, and the model's
/// metadata (from the first part) over all of them. The result is the first
/// part's header with every part's tensors, and the parts' total length as
/// `file_size`. An error says which part (its index in `paths`) failed.
pub fn validate_split(paths: &[std::path::PathBuf]) -> Result<GgufFile, (usize, GgufError)> {
    let count = paths.len() as u64;
    let mut first: Option<parse::Parsed> = None;
    let mut tensors = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut total_size = 0u64;
    for (i, path) in paths.iter().enumerate() {
        let fail = |e| (i, e);
        let (reader, len) = open_checked(path).map_err(fail)?;
        let mut reader = reader::Reader::new(reader, len, Some(path));
        let parsed = parse::parse(&mut reader).map_err(fail)?;
        let integer = |key: &str| {
            parsed
                .metadata
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.as_integer())
        };
        for (key, expected) in [("split.no", i as u64), ("split.count", count)] {
            match integer(key) {
                Some(found) if found == i128::from(expected) => {}
                Some(found) => {
                    return Err(fail(GgufError::SplitPart {
                        key: key.to_owned(),
                        found,
                        expected,
                    }))
                }
                None => {
                    return Err(fail(GgufError::MissingKey {
                        key: key.to_owned(),
                    }))
                }
            }
        }
        for t in &parsed.tensors {
            if !names.insert(t.name.clone()) {
                return Err(fail(GgufError::SplitDuplicateTensor {
                    name: t.name.clone(),
                }));
            }
        }
        total_size = total_size.saturating_add(len);
        tensors.extend(parsed.tensors.iter().cloned());
        if i == 0 {
            first = Some(parsed);
        }
    }
    let Some(first) = first else {
        return Err((
            0,
            GgufError::MissingKey {
                key: "split.count".to_owned(),
            },
        ));
    };
    let declared = first
        .metadata
        .iter()
        .find(|(k, _)| k == "split.tensors.count")
        .and_then(|(_, v)| v.as_integer());
    if let Some(declared) = declared {
        if declared != tensors.len() as i128 {
            return Err((
                0,
                GgufError::SplitPart {
                    key: "split.tensors.count".to_owned(),
                    found: declared,
                    expected: tensors.len() as u64,
                },
            ));
        }
    }
    let model = model::derive(&first.metadata, &tensors).map_err(|e| (0, e))?;
    Ok(GgufFile {
        version: first.version,
        alignment: first.alignment,
        data_offset: first.data_offset,
        file_size: total_size,
        metadata: first.metadata,
        tensors,
        model,
    })
}

/// Validates a GGUF file held in memory.
pub fn validate_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    validate_from(bytes, bytes.len() as u64, None)
}

/// Validates a GGUF file read from `reader`, which must be positioned at the
/// start of the file; `file_size` is the file's length in bytes and is
/// trusted as the end. Reads the header region only (plus what the reader
/// buffers ahead). Wrap unbuffered sources in a `BufReader`.
pub fn validate_reader<R: BufRead>(reader: R, file_size: u64) -> Result<GgufFile, GgufError> {
    validate_from(reader, file_size, None)
}

fn validate_from<R: BufRead>(
    reader: R,
    file_size: u64,
    path: Option<&Path>,
) -> Result<GgufFile, GgufError> {
    let mut reader = reader::Reader::new(reader, file_size, path);
    let parsed = parse::parse(&mut reader)?;
    let model = model::derive(&parsed.metadata, &parsed.tensors)?;
    Ok(GgufFile {
        version: parsed.version,
        alignment: parsed.alignment,
        data_offset: parsed.data_offset,
        file_size,
        metadata: parsed.metadata,
        tensors: parsed.tensors,
        model,
    })
}

fn ensure_regular(path: &Path, metadata: &std::fs::Metadata) -> Result<(), GgufError> {
    let file_type = metadata.file_type();
    if file_type.is_file() {
        return Ok(());
    }
    Err(GgufError::NotRegularFile {
        path: path.to_path_buf(),
        found: describe(&file_type),
    })
}

fn describe(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
    }
    "a special file"
}

/// Opens for reading. On Unix, `O_NONBLOCK` keeps the open from hanging if
/// the path became a FIFO after it was checked (it has no effect on regular
/// files), and `O_NOCTTY` keeps a terminal from becoming ours.
fn open_without_blocking(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    options.open(path)
}
