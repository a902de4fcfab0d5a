//! Reading and checking the header, metadata and tensor infos.
//!
//! The layout (GGUF v2/v3, little-endian):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor count u64 | metadata count u64
//! metadata:    key (u64 length + bytes) | value type u32 | value
//! tensor info: name (u64 length + bytes) | n_dims u32 | dims u64 × n_dims
//!              | ggml type u32 | offset u64 (relative to the data section)
//! padding to the alignment, then the tensor data section
//! ```

use std::collections::HashSet;
use std::io::BufRead;

use crate::error::GgufError;
use crate::ggml::{GgmlType, GgmlTypeIdError};
use crate::reader::Reader;
use crate::value::{Array, StringArray, Value, ValueType};
use crate::{
    TensorInfo, DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_DIMS,
    MAX_KEY_LEN, MAX_KV_COUNT, MAX_STRING_LEN, MAX_TENSOR_COUNT, MAX_TENSOR_NAME_LEN,
};

const MAGIC: &[u8; 4] = b"GGUF";

/// Fewest bytes one metadata entry can take: key length (8), a one-byte key,
/// the value type (4) and a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Fewest bytes one tensor info can take: name length (8), a one-byte name,
/// n_dims (4), no dims, ggml type (4) and offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 4 + 8;

/// What the header says, checked.
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
}

pub(crate) fn parse<R: BufRead>(r: &mut Reader<'_, R>) -> Result<Parsed, GgufError> {
    let magic = r.array::<4>(&|| "magic".to_owned())?;
    if &magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }

    let version = r.u32(&|| "version".to_owned())?;
    if version != 2 && version != 3 {
        // A big-endian writer stores version 3 as 0x03000000: a non-zero
        // value whose low 16 bits are zero (the test llama.cpp and gguf-py use).
        if version != 0 && version & 0xFFFF == 0 {
            return Err(GgufError::BigEndian { raw: version });
        }
        return Err(GgufError::UnsupportedVersion { version });
    }

    let tensor_count_offset = r.pos();
    let tensor_count = r.u64(&|| "tensor count".to_owned())?;
    let kv_count_offset = r.pos();
    let kv_count = r.u64(&|| "metadata key count".to_owned())?;

    check_count(
        tensor_count,
        MAX_TENSOR_COUNT,
        tensor_count_offset,
        "tensor count",
    )?;
    check_count(
        kv_count,
        MAX_KV_COUNT,
        kv_count_offset,
        "metadata key count",
    )?;
    r.ensure_count_fits(kv_count, MIN_KV_BYTES, kv_count_offset, &|| {
        "metadata key count".to_owned()
    })?;
    r.ensure_count_fits(
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        tensor_count_offset,
        &|| "tensor count".to_owned(),
    )?;

    let metadata = read_metadata(r, kv_count)?;
    let alignment = alignment(&metadata)?;

    // Checked again now that the metadata has used up some of the file.
    r.ensure_count_fits(
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        tensor_count_offset,
        &|| "tensor count".to_owned(),
    )?;
    let mut tensors = read_tensor_infos(r, tensor_count)?;

    let header_end = r.pos();
    let data_offset = if tensors.is_empty() {
        // llama.cpp only pads to the alignment when there is data to align.
        header_end
    } else {
        // header_end <= MAX_HEADER_BYTES and alignment <= MAX_ALIGNMENT, so
        // this cannot overflow; checked all the same.
        align_up(header_end, alignment).unwrap_or(u64::MAX)
    };
    check_data_layout(&mut tensors, data_offset, alignment, r.file_size())?;

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

fn check_count(count: u64, cap: u64, offset: u64, what: &'static str) -> Result<(), GgufError> {
    if count > cap {
        return Err(GgufError::CountCap {
            offset,
            what,
            count,
            cap,
        });
    }
    Ok(())
}

fn align_up(value: u64, alignment: u64) -> Option<u64> {
    let rem = value % alignment;
    if rem == 0 {
        Some(value)
    } else {
        value.checked_add(alignment - rem)
    }
}

/// Which kind of name is being read, for caps and messages.
#[derive(Clone, Copy)]
enum NameKind {
    Key,
    Tensor,
}

/// Reads a metadata key or tensor name: length-capped, non-empty, UTF-8.
fn read_name<R: BufRead>(
    r: &mut Reader<'_, R>,
    kind: NameKind,
    index: u64,
) -> Result<String, GgufError> {
    let what = || match kind {
        NameKind::Key => format!("metadata key {index}"),
        NameKind::Tensor => format!("name of tensor {index}"),
    };
    let offset = r.pos();
    let len = r.u64(&|| format!("length of {}", what()))?;
    match kind {
        NameKind::Key if len > MAX_KEY_LEN => {
            return Err(GgufError::StringCap {
                offset,
                what: what(),
                len,
                cap: MAX_KEY_LEN,
            });
        }
        NameKind::Tensor if len > MAX_TENSOR_NAME_LEN => {
            // Show what we can of the name; the bytes may not even exist.
            let shown = len.min(MAX_TENSOR_NAME_LEN + 1).min(r.remaining());
            let prefix = r.bytes(shown, &what)?;
            return Err(GgufError::TensorNameLength {
                offset,
                name: format!("{}…", String::from_utf8_lossy(&prefix)),
                len,
                cap: MAX_TENSOR_NAME_LEN,
            });
        }
        _ => {}
    }
    if len == 0 {
        return Err(GgufError::EmptyName {
            offset,
            what: what(),
        });
    }
    r.ensure_count_fits(len, 1, offset, &|| format!("length of {}", what()))?;
    let bytes = r.bytes(len, &what)?;
    String::from_utf8(bytes).map_err(|err| GgufError::InvalidUtf8 {
        offset,
        what: what(),
        valid_up_to: err.utf8_error().valid_up_to(),
        lossy: String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

fn read_metadata<R: BufRead>(
    r: &mut Reader<'_, R>,
    kv_count: u64,
) -> Result<Vec<(String, Value)>, GgufError> {
    // kv_count is at most MAX_KV_COUNT and was checked against the bytes left.
    let mut metadata = Vec::with_capacity(kv_count as usize);
    let mut seen = HashSet::with_capacity(kv_count as usize);
    for index in 0..kv_count {
        let key_offset = r.pos();
        let key = read_name(r, NameKind::Key, index)?;
        if !seen.insert(key.clone()) {
            return Err(GgufError::DuplicateKey {
                offset: key_offset,
                key,
            });
        }
        let type_offset = r.pos();
        let type_id = r.u32(&|| format!("value type of key \"{key}\""))?;
        let value_type =
            ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                offset: type_offset,
                key: key.clone(),
                type_id,
            })?;
        let value = read_value(r, &key, value_type)?;
        metadata.push((key, value));
    }
    Ok(metadata)
}

fn read_value<R: BufRead>(
    r: &mut Reader<'_, R>,
    key: &str,
    value_type: ValueType,
) -> Result<Value, GgufError> {
    let what = || format!("value of key \"{key}\"");
    Ok(match value_type {
        ValueType::U8 => Value::U8(r.u8(&what)?),
        ValueType::I8 => Value::I8(i8::from_le_bytes(r.array(&what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(r.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(r.array(&what)?)),
        ValueType::U32 => Value::U32(r.u32(&what)?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(r.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(r.array(&what)?)),
        ValueType::U64 => Value::U64(r.u64(&what)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(r.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(r.array(&what)?)),
        ValueType::Bool => {
            let offset = r.pos();
            Value::Bool(to_bool(r.u8(&what)?, offset, key)?)
        }
        ValueType::String => Value::String(read_string_value(r, &what)?),
        ValueType::Array => Value::Array(read_array(r, key, 1)?),
    })
}

fn to_bool(byte: u8, offset: u64, key: &str) -> Result<bool, GgufError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            offset,
            key: key.to_owned(),
            value,
        }),
    }
}

/// Reads a string value. Bytes that are not UTF-8 become U+FFFD (see
/// [`Value`] for why values are not refused for it).
fn read_string_value<R: BufRead>(
    r: &mut Reader<'_, R>,
    what: &dyn Fn() -> String,
) -> Result<String, GgufError> {
    let offset = r.pos();
    let len = r.u64(&|| format!("string length of {}", what()))?;
    if len > MAX_STRING_LEN {
        return Err(GgufError::StringCap {
            offset,
            what: what(),
            len,
            cap: MAX_STRING_LEN,
        });
    }
    r.ensure_count_fits(len, 1, offset, &|| format!("string length of {}", what()))?;
    let bytes = r.bytes(len, what)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

/// Reads `len` strings into one buffer (see [`StringArray`] for why), each
/// checked like a single string value. `len` has been checked against the
/// bytes left.
fn read_string_array<R: BufRead>(
    r: &mut Reader<'_, R>,
    len: u64,
    what: &dyn Fn() -> String,
) -> Result<StringArray, GgufError> {
    let mut data = Vec::new();
    let mut ends = Vec::with_capacity(len as usize);
    for i in 0..len {
        if r.try_buffered_string(&mut data, MAX_STRING_LEN).is_some() {
            ends.push(data.len());
            continue;
        }
        let element = || format!("element {i} of {}", what());
        let offset = r.pos();
        let n = r.u64(&|| format!("string length of {}", element()))?;
        if n > MAX_STRING_LEN {
            return Err(GgufError::StringCap {
                offset,
                what: element(),
                len: n,
                cap: MAX_STRING_LEN,
            });
        }
        r.ensure_count_fits(n, 1, offset, &|| format!("string length of {}", element()))?;
        r.append(n, &mut data, &element)?;
        ends.push(data.len());
    }
    // The concatenation is valid UTF-8 with every end on a char boundary
    // exactly when each string is valid UTF-8: the common case, checked in
    // one pass over the whole buffer. Copying the validated text into a
    // `String` costs far less than std's validator would.
    match simdutf8::basic::from_utf8(&data) {
        Ok(text) if ends.iter().all(|&end| text.is_char_boundary(end)) => {
            Ok(StringArray::from_parts(text.to_owned(), ends))
        }
        _ => Ok(lossy_strings(&data, &ends)),
    }
}

/// Rebuilds a string array element by element with bad bytes replaced.
fn lossy_strings(data: &[u8], ends: &[usize]) -> StringArray {
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let s = String::from_utf8_lossy(&data[start..end]);
            start = end;
            s
        })
        .collect()
}

/// Reads an array whose type tag has been read; `depth` is 1 for an array
/// directly under a key.
fn read_array<R: BufRead>(
    r: &mut Reader<'_, R>,
    key: &str,
    depth: u32,
) -> Result<Array, GgufError> {
    let offset = r.pos();
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingDepth {
            offset,
            key: key.to_owned(),
            depth,
            cap: MAX_ARRAY_DEPTH,
        });
    }
    let what = || format!("array of key \"{key}\"");
    let type_id = r.u32(&|| format!("element type of {}", what()))?;
    let element_type = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        offset,
        key: key.to_owned(),
        type_id,
    })?;
    let len_offset = r.pos();
    let len = r.u64(&|| format!("length of {}", what()))?;
    if len > MAX_ARRAY_LEN {
        return Err(GgufError::ArrayCap {
            offset: len_offset,
            key: key.to_owned(),
            len,
            cap: MAX_ARRAY_LEN,
        });
    }
    let element_size = element_type.min_encoded_size();
    r.ensure_count_fits(len, element_size, len_offset, &|| {
        format!("length of {}", what())
    })?;
    // From here `len` is at most MAX_ARRAY_LEN and `len * element_size` bytes
    // exist in the file, so every allocation below is bounded by the file.
    let n = len as usize;
    fn numbers<R: BufRead, const N: usize, T>(
        r: &mut Reader<'_, R>,
        len: u64,
        from_le: fn([u8; N]) -> T,
        what: &dyn Fn() -> String,
    ) -> Result<Vec<T>, GgufError> {
        let mut out = Vec::with_capacity(len as usize);
        r.decode_into(len, &mut out, from_le, what)?;
        Ok(out)
    }
    Ok(match element_type {
        ValueType::U8 => Array::U8(r.bytes(len, &what)?),
        ValueType::I8 => Array::I8(numbers(r, len, i8::from_le_bytes, &what)?),
        ValueType::U16 => Array::U16(numbers(r, len, u16::from_le_bytes, &what)?),
        ValueType::I16 => Array::I16(numbers(r, len, i16::from_le_bytes, &what)?),
        ValueType::U32 => Array::U32(numbers(r, len, u32::from_le_bytes, &what)?),
        ValueType::I32 => Array::I32(numbers(r, len, i32::from_le_bytes, &what)?),
        ValueType::F32 => Array::F32(numbers(r, len, f32::from_le_bytes, &what)?),
        ValueType::U64 => Array::U64(numbers(r, len, u64::from_le_bytes, &what)?),
        ValueType::I64 => Array::I64(numbers(r, len, i64::from_le_bytes, &what)?),
        ValueType::F64 => Array::F64(numbers(r, len, f64::from_le_bytes, &what)?),
        ValueType::Bool => {
            let bytes = r.bytes(len, &what)?;
            let mut bools = Vec::with_capacity(n);
            for (i, &byte) in bytes.iter().enumerate() {
                bools.push(to_bool(byte, len_offset + 8 + i as u64, key)?);
            }
            Array::Bool(bools)
        }
        ValueType::String => Array::String(read_string_array(r, len, &what)?),
        ValueType::Array => {
            let mut arrays = Vec::with_capacity(n);
            for _ in 0..len {
                arrays.push(read_array(r, key, depth + 1)?);
            }
            Array::Array(arrays)
        }
    })
}

/// `general.alignment`: a u32 power of two (llama.cpp requires the u32 type),
/// at most [`MAX_ALIGNMENT`]; [`DEFAULT_ALIGNMENT`] when absent.
fn alignment(metadata: &[(String, Value)]) -> Result<u64, GgufError> {
    const KEY: &str = "general.alignment";
    let Some((_, value)) = metadata.iter().find(|(key, _)| key == KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let Value::U32(alignment) = *value else {
        return Err(GgufError::WrongValueType {
            key: KEY.to_owned(),
            expected: ValueType::U32.name(),
            found: value.value_type().name(),
        });
    };
    let alignment = u64::from(alignment);
    if !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
        return Err(GgufError::BadAlignment {
            value: alignment,
            cap: MAX_ALIGNMENT,
        });
    }
    Ok(alignment)
}

fn read_tensor_infos<R: BufRead>(
    r: &mut Reader<'_, R>,
    tensor_count: u64,
) -> Result<Vec<TensorInfo>, GgufError> {
    // tensor_count is at most MAX_TENSOR_COUNT and was checked against the bytes left.
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut seen = HashSet::with_capacity(tensor_count as usize);
    for index in 0..tensor_count {
        let name_offset = r.pos();
        let name = read_name(r, NameKind::Tensor, index)?;
        if !seen.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor {
                offset: name_offset,
                name,
            });
        }
        tensors.push(read_tensor_info(r, name)?);
    }
    Ok(tensors)
}

/// Reads the rest of one tensor info once its name is known.
fn read_tensor_info<R: BufRead>(
    r: &mut Reader<'_, R>,
    name: String,
) -> Result<TensorInfo, GgufError> {
    let n_dims_offset = r.pos();
    let n_dims = r.u32(&|| format!("dimension count of tensor \"{name}\""))?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDimensions {
            offset: n_dims_offset,
            tensor: name,
            n_dims,
            cap: MAX_DIMS,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for index in 0..n_dims as usize {
        let offset = r.pos();
        let dim = r.u64(&|| format!("dimension {index} of tensor \"{name}\""))?;
        if dim == 0 {
            return Err(GgufError::ZeroDimension {
                offset,
                tensor: name,
                index,
            });
        }
        dims.push(dim);
    }
    // ggml keeps element counts in int64_t.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &dim| acc.checked_mul(dim))
        .filter(|&n| n <= i64::MAX as u64);
    let Some(n_elements) = n_elements else {
        return Err(GgufError::DimensionOverflow {
            offset: n_dims_offset,
            tensor: name,
            dims,
            what: "element count",
        });
    };

    let type_offset = r.pos();
    let type_id = r.u32(&|| format!("ggml type of tensor \"{name}\""))?;
    let ggml_type = match GgmlType::from_id(type_id) {
        Ok(ty) => ty,
        Err(GgmlTypeIdError::Removed(removed)) => {
            return Err(GgufError::RemovedGgmlType {
                offset: type_offset,
                tensor: name,
                type_id,
                name: removed,
            });
        }
        Err(GgmlTypeIdError::Unknown) => {
            return Err(GgufError::UnknownGgmlType {
                offset: type_offset,
                tensor: name,
                type_id,
            });
        }
    };
    // Rows are quantised block by block; a scalar (no dims) has a row of one.
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % u64::from(ggml_type.block_size()) != 0 {
        return Err(GgufError::BlockSize {
            offset: type_offset,
            tensor: name,
            ggml_type,
            ne0,
            block_size: ggml_type.block_size(),
        });
    }
    let Some(n_bytes) = ggml_type
        .n_bytes(n_elements)
        .filter(|&n| n <= i64::MAX as u64)
    else {
        return Err(GgufError::DimensionOverflow {
            offset: n_dims_offset,
            tensor: name,
            dims,
            what: "byte size",
        });
    };

    let offset = r.u64(&|| format!("data offset of tensor \"{name}\""))?;
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        // Relative for now; made absolute by `check_data_layout`.
        offset,
        n_bytes,
        n_elements,
    })
}

/// Checks every tensor's data range against the alignment, the end of the
/// file and the other tensors, and turns the offsets absolute.
fn check_data_layout(
    tensors: &mut [TensorInfo],
    data_offset: u64,
    alignment: u64,
    file_size: u64,
) -> Result<(), GgufError> {
    for tensor in tensors.iter_mut() {
        if tensor.offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                tensor: tensor.name.clone(),
                offset: tensor.offset,
                alignment,
            });
        }
        // u128: a hostile offset near u64::MAX must not wrap to a small number.
        let start = u128::from(data_offset) + u128::from(tensor.offset);
        let end = start + u128::from(tensor.n_bytes);
        if end > u128::from(file_size) {
            return Err(GgufError::TensorPastEnd {
                tensor: tensor.name.clone(),
                start,
                end,
                file_size,
            });
        }
        // Inside the file, so it fits in u64.
        tensor.offset = start as u64;
    }

    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        let (first, second) = (pair[0], pair[1]);
        // Both ends are inside the file (checked above), so no overflow.
        if first.offset + first.n_bytes > second.offset {
            return Err(GgufError::OverlappingTensors {
                first: first.name.clone(),
                first_start: first.offset,
                first_end: first.offset + first.n_bytes,
                second: second.name.clone(),
                second_start: second.offset,
                second_end: second.offset + second.n_bytes,
            });
        }
    }

    // llama.cpp's reader computes each offset itself and refuses a file whose
    // stored offsets differ (`gguf_init_from_reader`, "tensor ... has offset").
    let mut expected = 0u64;
    for tensor in tensors.iter() {
        let offset = tensor.offset - data_offset;
        if offset != expected {
            return Err(GgufError::TensorLayout {
                tensor: tensor.name.clone(),
                offset,
                expected,
            });
        }
        // The tensor lies inside the file, so neither step can overflow.
        expected = align_up(expected + tensor.n_bytes, alignment).unwrap_or(u64::MAX);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_up_rounds_to_the_next_multiple() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(1, 32), Some(32));
        assert_eq!(align_up(64, 32), Some(64));
        assert_eq!(align_up(u64::MAX, 32), None);
    }

    #[test]
    fn bools_must_be_zero_or_one() {
        assert!(!to_bool(0, 0, "k").unwrap());
        assert!(to_bool(1, 0, "k").unwrap());
        assert_eq!(to_bool(2, 7, "k").unwrap_err().kind(), "invalid_bool");
    }
}
