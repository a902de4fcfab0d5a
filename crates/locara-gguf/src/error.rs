//! The one error type of this crate.

use std::path::{Path, PathBuf};

use crate::ggml::GgmlType;

/// Why a file was rejected. The message names what was wrong, where (byte
/// offset, metadata key or tensor name), the value found and the limit;
/// [`GgufError::kind`] gives a stable machine string for each variant.
///
/// Offsets are absolute byte offsets from the start of the file unless a
/// message says "relative to the data section". Errors from parsing do not
/// name the file: the caller knows which file it asked about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened, inspected or read. `path` is `None`
    /// when reading from a caller's reader.
    #[error("cannot read {}: {source}", path.as_deref().map_or("the input".into(), Path::to_string_lossy))]
    Io {
        path: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },

    /// The path names a directory, FIFO, socket or device, which could block
    /// a reader or never end.
    #[error("{} is {found}, not a regular file; a model must be a regular file", path.display())]
    NotRegularFile { path: PathBuf, found: &'static str },

    /// The first four bytes are not `GGUF`.
    #[error("at offset 0x0: magic bytes \"{}\" are not \"GGUF\"; this is not a GGUF file", found.escape_ascii())]
    BadMagic { found: [u8; 4] },

    /// The version field reads as a byte-swapped small number: the file was
    /// written big-endian.
    #[error("at offset 0x4: version field {raw:#010x} is version {} byte-swapped; big-endian GGUF files are not supported", raw.swap_bytes())]
    BigEndian { raw: u32 },

    /// A version other than 2 or 3.
    #[error("at offset 0x4: GGUF version {version} is not supported (supported: 2 and 3)")]
    UnsupportedVersion { version: u32 },

    /// A fixed-size field runs past the end of the file.
    #[error(
        "at offset {offset:#x}: {what} needs {needed} bytes but the file ends at {file_size:#x}"
    )]
    Truncated {
        offset: u64,
        what: String,
        needed: u64,
        file_size: u64,
    },

    /// The metadata key count or tensor count is above its cap.
    #[error("at offset {offset:#x}: {what} {count} exceeds the cap {cap}")]
    CountCap {
        offset: u64,
        what: &'static str,
        count: u64,
        cap: u64,
    },

    /// A declared count or length cannot fit in the bytes left in the file.
    #[error("at offset {offset:#x}: {what} is {count}, which needs at least {min_bytes} bytes, but only {available} remain before the end of the file")]
    LengthPastEnd {
        offset: u64,
        what: String,
        count: u64,
        /// At least this many bytes (as a u128, since a hostile count times
        /// the element size may not fit in u64).
        min_bytes: u128,
        available: u64,
    },

    /// A string length is above its cap.
    #[error("at offset {offset:#x}: {what} length {len} exceeds the cap {cap}")]
    StringCap {
        offset: u64,
        what: String,
        len: u64,
        cap: u64,
    },

    /// An array length is above the cap.
    #[error(
        "at offset {offset:#x}: array of key \"{key}\" has {len} elements, exceeding the cap {cap}"
    )]
    ArrayCap {
        offset: u64,
        key: String,
        len: u64,
        cap: u64,
    },

    /// Arrays nested deeper than the cap.
    #[error("at offset {offset:#x}: value of key \"{key}\" nests arrays {depth} deep, exceeding the cap {cap}")]
    NestingDepth {
        offset: u64,
        key: String,
        depth: u32,
        cap: u32,
    },

    /// Metadata and tensor infos together are longer than the header cap.
    #[error("at offset {offset:#x}: {what} would take the header (metadata and tensor infos) past {cap} bytes, the cap")]
    HeaderCap { offset: u64, what: String, cap: u64 },

    /// A metadata value type id the format does not define.
    #[error("at offset {offset:#x}: key \"{key}\" has unknown value type {type_id}")]
    UnknownValueType {
        offset: u64,
        key: String,
        type_id: u32,
    },

    /// A bool stored as something other than 0 or 1.
    #[error("at offset {offset:#x}: key \"{key}\" has bool byte {value:#04x}, expected 0 or 1")]
    InvalidBool { offset: u64, key: String, value: u8 },

    /// A key or tensor name that is not valid UTF-8.
    #[error("at offset {offset:#x}: {what} is not valid UTF-8 (first bad byte at index {valid_up_to}): \"{}\"", lossy)]
    InvalidUtf8 {
        offset: u64,
        what: String,
        valid_up_to: usize,
        /// The name with bad bytes replaced, for the message.
        lossy: String,
    },

    /// An empty metadata key or tensor name.
    #[error("at offset {offset:#x}: {what} is empty")]
    EmptyName { offset: u64, what: String },

    /// A tensor name longer than ggml can hold.
    #[error("at offset {offset:#x}: tensor name \"{name}\" is {len} bytes, longer than ggml's limit of {cap}")]
    TensorNameLength {
        offset: u64,
        name: String,
        len: u64,
        cap: u64,
    },

    /// The same metadata key twice.
    #[error("at offset {offset:#x}: duplicate metadata key \"{key}\"")]
    DuplicateKey { offset: u64, key: String },

    /// The same tensor name twice.
    #[error("at offset {offset:#x}: duplicate tensor name \"{name}\"")]
    DuplicateTensor { offset: u64, name: String },

    /// A well-known key with a value of the wrong type.
    #[error("metadata key \"{key}\" is of type {found}, expected {expected}")]
    WrongValueType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },

    /// `general.alignment` is zero, not a power of two, or above the cap.
    #[error("metadata key \"general.alignment\" = {value} is not a power of two no greater than the cap {cap}")]
    BadAlignment { value: u64, cap: u64 },

    /// More dimensions than ggml supports.
    #[error("at offset {offset:#x}: tensor \"{tensor}\" has {n_dims} dimensions, more than ggml's {cap}")]
    TooManyDimensions {
        offset: u64,
        tensor: String,
        n_dims: u32,
        cap: u32,
    },

    /// A dimension of size zero.
    #[error("at offset {offset:#x}: tensor \"{tensor}\" has dimension {index} of size 0")]
    ZeroDimension {
        offset: u64,
        tensor: String,
        index: usize,
    },

    /// A shape whose element count or byte size does not fit ggml's 63-bit
    /// sizes.
    #[error("at offset {offset:#x}: tensor \"{tensor}\" of shape {dims:?}: {what} overflows the 63-bit sizes ggml uses")]
    DimensionOverflow {
        offset: u64,
        tensor: String,
        dims: Vec<u64>,
        what: &'static str,
    },

    /// A ggml type id that ggml never defined (or that is newer than the
    /// pinned llama.cpp).
    #[error("at offset {offset:#x}: tensor \"{tensor}\" has unknown ggml type {type_id}")]
    UnknownGgmlType {
        offset: u64,
        tensor: String,
        type_id: u32,
    },

    /// A ggml type id that ggml has removed.
    #[error("at offset {offset:#x}: tensor \"{tensor}\" has ggml type {type_id} ({name}), which ggml no longer supports; re-quantize the model")]
    RemovedGgmlType {
        offset: u64,
        tensor: String,
        type_id: u32,
        name: &'static str,
    },

    /// A row length that is not a whole number of quantisation blocks.
    #[error("at offset {offset:#x}: tensor \"{tensor}\" of type {ggml_type} has rows of {ne0} elements, not a multiple of the block size {block_size}")]
    BlockSize {
        offset: u64,
        tensor: String,
        ggml_type: GgmlType,
        ne0: u64,
        block_size: u32,
    },

    /// A tensor offset that is not a multiple of the alignment.
    #[error("tensor \"{tensor}\": data offset {offset:#x} (relative to the data section) is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    /// A tensor's data range ends past the end of the file.
    #[error("tensor \"{tensor}\": data range {start:#x}..{end:#x} ends past end of file ({file_size:#x})")]
    TensorPastEnd {
        tensor: String,
        start: u128,
        end: u128,
        file_size: u64,
    },

    /// Two tensors whose data ranges overlap.
    #[error("tensor \"{second}\": data range {second_start:#x}..{second_end:#x} overlaps tensor \"{first}\" at {first_start:#x}..{first_end:#x}")]
    OverlappingTensors {
        first: String,
        first_start: u64,
        first_end: u64,
        second: String,
        second_start: u64,
        second_end: u64,
    },

    /// Tensors not packed in file order. llama.cpp's reader (`gguf.cpp`)
    /// refuses any other layout, so such a file would fail to load anyway.
    #[error("tensor \"{tensor}\": data offset {offset:#x} (relative to the data section), expected {expected:#x}: llama.cpp requires tensors packed in file order, each padded to the alignment")]
    TensorLayout {
        tensor: String,
        offset: u64,
        expected: u64,
    },

    /// A part of a split model out of place: its number, the part count or
    /// the tensor count differs from what the set of files says.
    #[error("split model: metadata key \"{key}\" is {found}, expected {expected}")]
    SplitPart {
        key: String,
        found: i128,
        expected: u64,
    },

    /// A tensor in two parts of a split model.
    #[error("split model: tensor \"{name}\" appears in two parts")]
    SplitDuplicateTensor { name: String },

    /// A required metadata key is absent.
    #[error("metadata key \"{key}\" is missing")]
    MissingKey { key: String },

    /// A required string value that is empty.
    #[error("metadata key \"{key}\" is an empty string")]
    EmptyValue { key: String },

    /// A metadata value outside its sane range.
    #[error("metadata key \"{key}\" = {value} is outside {min}..={max}")]
    MetadataRange {
        key: String,
        value: i128,
        min: u64,
        max: u64,
    },

    /// A per-layer metadata array of the wrong length.
    #[error("metadata key \"{key}\" has {len} entries, expected {expected} (one per layer)")]
    MetadataArrayLength {
        key: String,
        len: usize,
        expected: usize,
    },

    /// A metadata value that must divide another and does not.
    #[error("metadata key \"{key}\" = {value} is not divisible by \"{divisor_key}\" = {divisor}")]
    MetadataNotDivisible {
        key: String,
        value: u64,
        divisor_key: String,
        divisor: u64,
    },

    /// Per-layer key/value heads above the layer's attention heads.
    #[error("metadata key \"{key}\": layer {layer} has {kv_heads} key/value heads, more than its {heads} attention heads")]
    KvHeads {
        key: String,
        layer: usize,
        kv_heads: u32,
        heads: u32,
    },
}

impl GgufError {
    /// A stable machine string for the variant, for logs, metrics and API
    /// error bodies. These never change once released.
    pub fn kind(&self) -> &'static str {
        match self {
            GgufError::Io { .. } => "io",
            GgufError::NotRegularFile { .. } => "not_regular_file",
            GgufError::BadMagic { .. } => "bad_magic",
            GgufError::BigEndian { .. } => "big_endian",
            GgufError::UnsupportedVersion { .. } => "unsupported_version",
            GgufError::Truncated { .. } => "truncated",
            GgufError::CountCap { .. } => "count_cap",
            GgufError::LengthPastEnd { .. } => "length_past_end",
            GgufError::StringCap { .. } => "string_cap",
            GgufError::ArrayCap { .. } => "array_cap",
            GgufError::NestingDepth { .. } => "nesting_depth",
            GgufError::HeaderCap { .. } => "header_cap",
            GgufError::UnknownValueType { .. } => "unknown_value_type",
            GgufError::InvalidBool { .. } => "invalid_bool",
            GgufError::InvalidUtf8 { .. } => "invalid_utf8",
            GgufError::EmptyName { .. } => "empty_name",
            GgufError::TensorNameLength { .. } => "tensor_name_length",
            GgufError::DuplicateKey { .. } => "duplicate_key",
            GgufError::DuplicateTensor { .. } => "duplicate_tensor",
            GgufError::WrongValueType { .. } => "wrong_value_type",
            GgufError::BadAlignment { .. } => "bad_alignment",
            GgufError::TooManyDimensions { .. } => "too_many_dimensions",
            GgufError::ZeroDimension { .. } => "zero_dimension",
            GgufError::DimensionOverflow { .. } => "dimension_overflow",
            GgufError::UnknownGgmlType { .. } => "unknown_ggml_type",
            GgufError::RemovedGgmlType { .. } => "removed_ggml_type",
            GgufError::BlockSize { .. } => "block_size",
            GgufError::MisalignedTensor { .. } => "misaligned_tensor",
            GgufError::TensorPastEnd { .. } => "tensor_past_end",
            GgufError::OverlappingTensors { .. } => "overlapping_tensors",
            GgufError::TensorLayout { .. } => "tensor_layout",
            GgufError::MissingKey { .. } => "missing_key",
            GgufError::SplitPart { .. } => "split_part",
            GgufError::SplitDuplicateTensor { .. } => "split_duplicate_tensor",
            GgufError::EmptyValue { .. } => "empty_value",
            GgufError::MetadataRange { .. } => "metadata_range",
            GgufError::MetadataArrayLength { .. } => "metadata_array_length",
            GgufError::MetadataNotDivisible { .. } => "metadata_not_divisible",
            GgufError::KvHeads { .. } => "kv_heads",
        }
    }
}
