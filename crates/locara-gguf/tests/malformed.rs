//! Malformed GGUF files: every one must be rejected with an error that names
//! the problem, and none may panic.
//!
//! Three generators: every truncation point of the synthetic model, seeded
//! random bit flips, and hand-written cases for each class of damage that
//! has broken GGUF readers before (huge counts, lengths past the end, deep
//! nesting, alignment 0, overflowing dimensions, overlapping tensors, ...).

use std::panic::{catch_unwind, AssertUnwindSafe};

use locara_gguf::testing::{GgufBuilder, TensorSpec};
use locara_gguf::{
    validate_bytes, Array, GgmlType, GgufError, GgufFile, Value, MAX_ARRAY_LEN, MAX_STRING_LEN,
};

/// Runs the validator, turning a panic into a test failure that names the case.
fn run(case: &str, bytes: &[u8]) -> Result<GgufFile, GgufError> {
    match catch_unwind(AssertUnwindSafe(|| validate_bytes(bytes))) {
        Ok(result) => result,
        Err(_) => panic!("validate_bytes panicked on case {case}"),
    }
}

/// Asserts `bytes` is rejected with error kind `kind` and a message
/// containing every one of `needles`.
fn assert_rejected(case: &str, bytes: &[u8], kind: &str, needles: &[&str]) {
    match run(case, bytes) {
        Ok(_) => panic!("case {case}: accepted, expected {kind}"),
        Err(err) => {
            let message = err.to_string();
            assert_eq!(
                err.kind(),
                kind,
                "case {case}: wrong kind; message: {message}"
            );
            println!("{case}: [{kind}] {message}");
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "case {case}: {message:?} does not mention {needle:?}"
                );
            }
        }
    }
}

/// SplitMix64: a seeded generator, so every run flips the same bits.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn synthetic() -> Vec<u8> {
    GgufBuilder::synthetic().build()
}

/// Relative offset of tensor `i` in the synthetic model.
fn packed_offset(i: usize) -> u64 {
    GgufBuilder::synthetic().layout()[i].0
}

fn with_offset(mut b: GgufBuilder, i: usize, offset: u64) -> GgufBuilder {
    b.tensors[i].offset = Some(offset);
    b
}

#[test]
fn the_synthetic_model_is_valid() {
    let bytes = synthetic();
    let file = run("synthetic", &bytes).expect("synthetic model must validate");
    assert_eq!(file.version, 3);
    assert_eq!(file.alignment, 32);
    assert_eq!(file.data_offset % 32, 0);
    assert_eq!(file.file_size, bytes.len() as u64);
    assert_eq!(file.tensors.len(), 5);
    assert_eq!(file.get("test.i8"), Some(&Value::I8(-5)));
    assert_eq!(
        file.get("test.nested")
            .and_then(Value::as_array)
            .map(Array::len),
        Some(3),
        "nested array survives"
    );
    let model = &file.model;
    assert_eq!(model.architecture, "llama");
    assert_eq!(model.name.as_deref(), Some("Synthetic Test Model"));
    assert_eq!(
        (model.block_count, model.embedding_length, model.head_count),
        (1, 64, 4)
    );
    assert_eq!(model.head_count_kv, vec![2]);
    assert_eq!((model.key_length, model.value_length), (16, 16));
    assert_eq!(model.context_length, 2048);
    assert_eq!(model.vocab_size, 32);
    assert!(model.has_chat_template);
    assert_eq!(model.quantization, "Q8_0");
    assert_eq!(
        model.parameter_count,
        64 * 32 + 64 + 256 * 4 + 64 * 4 + 64 * 32
    );
    // Q8_0 2176 + F32 256 + Q4_K 576 + F16 512 + Q4_0 1152
    assert_eq!(model.tensor_data_bytes, 2176 + 256 + 576 + 512 + 1152);
    let last = file.tensors.last().unwrap();
    assert_eq!(
        last.offset + last.n_bytes,
        file.file_size,
        "the last tensor ends the file"
    );

    let summary = file.tensor_summary();
    assert_eq!(summary.count, 5);
    assert_eq!(summary.total_bytes, model.tensor_data_bytes);
    assert_eq!(summary.by_type[0].ggml_type, "Q8_0", "most bytes first");
}

#[test]
fn every_truncation_of_the_synthetic_model_is_rejected() {
    let bytes = synthetic();
    for len in 0..bytes.len() {
        let case = format!("truncated to {len} of {} bytes", bytes.len());
        let err = match run(&case, &bytes[..len]) {
            Ok(_) => panic!("{case}: accepted"),
            Err(err) => err,
        };
        assert!(
            matches!(
                err.kind(),
                "truncated" | "length_past_end" | "tensor_past_end"
            ),
            "{case}: unexpected kind {} ({err})",
            err.kind()
        );
        let message = err.to_string();
        assert!(
            message.contains("offset") || message.contains("past end of file"),
            "{case}: message does not say where: {message}"
        );
    }
}

/// `validate_reader` through a `BufReader` of `capacity` bytes: small
/// buffers split every field and string across refills, which takes the
/// slow paths that in-memory input never does.
fn via_small_buffer(bytes: &[u8], capacity: usize) -> Result<GgufFile, GgufError> {
    let reader = std::io::BufReader::with_capacity(capacity, bytes);
    match catch_unwind(AssertUnwindSafe(|| {
        locara_gguf::validate_reader(reader, bytes.len() as u64)
    })) {
        Ok(result) => result,
        Err(_) => panic!("validate_reader panicked with a {capacity}-byte buffer"),
    }
}

#[test]
fn buffering_does_not_change_the_verdict() {
    let bytes = synthetic();
    let expected = run("synthetic", &bytes).unwrap();
    for capacity in [1, 3, 8, 13, 64, 1000] {
        let file = via_small_buffer(&bytes, capacity).unwrap();
        assert_eq!(file.metadata, expected.metadata, "capacity {capacity}");
        assert_eq!(file.tensors, expected.tensors, "capacity {capacity}");
        assert_eq!(file.model, expected.model, "capacity {capacity}");
    }
    // Truncated files: the same error, word for word, whatever the buffering.
    for len in (0..bytes.len()).step_by(5) {
        let want = run("truncated", &bytes[..len]).unwrap_err().to_string();
        for capacity in [1, 8, 13, 64] {
            let got = via_small_buffer(&bytes[..len], capacity)
                .unwrap_err()
                .to_string();
            assert_eq!(got, want, "truncated to {len}, capacity {capacity}");
        }
    }
}

#[test]
fn random_bit_flips_never_panic() {
    let bytes = synthetic();
    // Flips in the header region are the interesting ones: tensor data is
    // not read, so a flip there cannot change the verdict.
    let header_len = run("synthetic", &bytes).unwrap().data_offset as usize;
    let mut rng = SplitMix64(0x6767_7566_5EED);
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..3000 {
        let mut mutated = bytes.clone();
        let flips = 1 + rng.below(4);
        for _ in 0..flips {
            let byte = rng.below(header_len);
            mutated[byte] ^= 1 << rng.below(8);
        }
        match run(&format!("bit flip #{case}"), &mutated) {
            Ok(_) => accepted += 1,
            Err(err) => {
                assert!(!err.kind().is_empty());
                rejected += 1;
            }
        }
    }
    // Most flips land in names and values (still valid), the rest break
    // structure; both outcomes must occur or the generator is broken.
    assert!(
        accepted > 0 && rejected > 0,
        "accepted {accepted}, rejected {rejected}"
    );
}

#[test]
fn random_byte_overwrites_never_panic() {
    // Whole bytes set to boundary values hit lengths and counts harder than
    // single bit flips do.
    let bytes = synthetic();
    let mut rng = SplitMix64(42);
    let specials = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];
    for case in 0..1500 {
        let mut mutated = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(1200.min(mutated.len()));
            mutated[at] = specials[rng.below(specials.len())];
        }
        let _ = run(&format!("byte overwrite #{case}"), &mutated);
    }
}

/// One hand-written malformed file.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    kind: &'static str,
    needles: &'static [&'static str],
}

fn case(
    name: &'static str,
    b: GgufBuilder,
    kind: &'static str,
    needles: &'static [&'static str],
) -> Case {
    Case {
        name,
        bytes: b.build(),
        kind,
        needles,
    }
}

/// Nested arrays `depth` deep under one key, innermost an empty u8 array.
fn nested(depth: u32) -> Array {
    let mut array = Array::U8(Vec::new());
    for _ in 1..depth {
        array = Array::Array(vec![array]);
    }
    array
}

fn raw_array_header(element_type: u32, len: u64) -> Vec<u8> {
    let mut payload = element_type.to_le_bytes().to_vec();
    payload.extend_from_slice(&len.to_le_bytes());
    payload
}

fn classes() -> Vec<Case> {
    let s = GgufBuilder::synthetic;
    let mut cases = vec![
        // --- header ---
        case(
            "bad magic",
            GgufBuilder {
                magic: *b"GGML",
                ..s()
            },
            "bad_magic",
            &["GGML", "offset 0x0"],
        ),
        case(
            "empty magic",
            GgufBuilder {
                magic: [0; 4],
                ..s()
            },
            "bad_magic",
            &["\\x00"],
        ),
        case(
            "big-endian",
            GgufBuilder {
                version: 3u32.swap_bytes(),
                ..s()
            },
            "big_endian",
            &["big-endian", "0x03000000"],
        ),
        case(
            "version 1",
            GgufBuilder { version: 1, ..s() },
            "unsupported_version",
            &["version 1"],
        ),
        case(
            "version 0",
            GgufBuilder { version: 0, ..s() },
            "unsupported_version",
            &["version 0"],
        ),
        case(
            "version 4",
            GgufBuilder { version: 4, ..s() },
            "unsupported_version",
            &["version 4"],
        ),
        case(
            "version u32::MAX",
            GgufBuilder {
                version: u32::MAX,
                ..s()
            },
            "unsupported_version",
            &["4294967295"],
        ),
        // --- counts ---
        case(
            "huge metadata count",
            GgufBuilder {
                kv_count_override: Some(u32::MAX.into()),
                ..s()
            },
            "count_cap",
            &[
                "at offset 0x10",
                "metadata key count 4294967295 exceeds the cap 65536",
            ],
        ),
        case(
            "huge tensor count",
            GgufBuilder {
                tensor_count_override: Some(u64::MAX),
                ..s()
            },
            "count_cap",
            &[
                "at offset 0x8",
                "tensor count 18446744073709551615 exceeds the cap 65536",
            ],
        ),
        case(
            "metadata count under the cap but past the end",
            GgufBuilder {
                kv_count_override: Some(65_536),
                ..s()
            },
            "length_past_end",
            &["metadata key count is 65536", "remain"],
        ),
        case(
            "tensor count under the cap but past the end",
            GgufBuilder {
                tensor_count_override: Some(60_000),
                ..s()
            },
            "length_past_end",
            &["tensor count is 60000"],
        ),
        // --- strings ---
        case(
            "string length past the end",
            s().kv_raw(
                b"general.description",
                8,
                (1u64 << 20).to_le_bytes().to_vec(),
            ),
            "length_past_end",
            &["general.description", "1048576"],
        ),
        case(
            "string length above the cap",
            s().kv_raw(
                b"general.description",
                8,
                (MAX_STRING_LEN + 1).to_le_bytes().to_vec(),
            ),
            "string_cap",
            &["general.description", "16777217", "16777216"],
        ),
        case(
            "string length u64::MAX",
            s().kv_raw(b"general.description", 8, u64::MAX.to_le_bytes().to_vec()),
            "string_cap",
            &["18446744073709551615"],
        ),
        case(
            "key length above the cap",
            GgufBuilder::new().kv_raw(&[b'k'; 70_000], 4, 1u32.to_le_bytes().to_vec()),
            "string_cap",
            &["metadata key 0", "70000", "65535"],
        ),
        case(
            "empty key",
            s().kv_raw(b"", 4, 1u32.to_le_bytes().to_vec()),
            "empty_name",
            &["metadata key", "empty"],
        ),
        case(
            "key not UTF-8",
            s().kv_raw(b"general.\xffname", 4, 1u32.to_le_bytes().to_vec()),
            "invalid_utf8",
            &["not valid UTF-8", "index 8"],
        ),
        // --- arrays ---
        case(
            "array length past the end",
            s().kv_raw(b"tokenizer.ggml.merges", 9, raw_array_header(8, 1_000_000)),
            "length_past_end",
            &["tokenizer.ggml.merges", "1000000", "8000000"],
        ),
        case(
            "array of u64 past the end",
            s().kv_raw(b"test.big", 9, raw_array_header(10, 100_000)),
            "length_past_end",
            &["test.big", "800000"],
        ),
        case(
            "array length above the cap",
            s().kv_raw(b"test.big", 9, raw_array_header(0, MAX_ARRAY_LEN + 1)),
            "array_cap",
            &["test.big", "16777217", "16777216"],
        ),
        case(
            "array length u64::MAX",
            s().kv_raw(b"test.big", 9, raw_array_header(10, u64::MAX)),
            "array_cap",
            &["18446744073709551615"],
        ),
        case(
            "arrays nested 5 deep",
            s().kv("test.deep", Value::Array(nested(5))),
            "nesting_depth",
            &["test.deep", "5 deep", "cap 4"],
        ),
        case(
            "arrays nested 200 deep",
            s().kv("test.deep", Value::Array(nested(200))),
            "nesting_depth",
            &["test.deep"],
        ),
        // --- value types ---
        case(
            "unknown value type",
            s().kv_raw(b"test.unknown", 13, vec![0; 8]),
            "unknown_value_type",
            &["test.unknown", "type 13"],
        ),
        case(
            "unknown array element type",
            s().kv_raw(b"test.unknown", 9, raw_array_header(99, 1)),
            "unknown_value_type",
            &["test.unknown", "type 99"],
        ),
        case(
            "bool that is neither 0 nor 1",
            s().kv_raw(b"test.bad_bool", 7, vec![2]),
            "invalid_bool",
            &["test.bad_bool", "0x02"],
        ),
        case(
            "duplicate key",
            s().kv("general.name", Value::String("again".to_owned())),
            "duplicate_key",
            &["duplicate metadata key \"general.name\""],
        ),
        // --- alignment ---
        case(
            "alignment 0",
            s().set("general.alignment", Value::U32(0)),
            "bad_alignment",
            &["general.alignment", "= 0"],
        ),
        case(
            "alignment 3",
            s().set("general.alignment", Value::U32(3)),
            "bad_alignment",
            &["= 3", "power of two"],
        ),
        case(
            "alignment above the cap",
            s().set("general.alignment", Value::U32(1 << 21)),
            "bad_alignment",
            &["2097152", "1048576"],
        ),
        case(
            "alignment of the wrong type",
            s().set("general.alignment", Value::U64(32)),
            "wrong_value_type",
            &["general.alignment", "u64", "u32"],
        ),
        // --- tensor shapes and types ---
        case(
            "zero dimension",
            s().tensor("blk.0.bad.weight", &[64, 0], GgmlType::F32),
            "zero_dimension",
            &["blk.0.bad.weight", "dimension 1 of size 0"],
        ),
        case(
            "five dimensions",
            s().tensor("blk.0.bad.weight", &[1, 1, 1, 1, 1], GgmlType::F32),
            "too_many_dimensions",
            &["blk.0.bad.weight", "5 dimensions"],
        ),
        case(
            "element count overflows u64",
            s().tensor("blk.0.bad.weight", &[1 << 32, 1 << 32], GgmlType::F32),
            "dimension_overflow",
            &["blk.0.bad.weight", "element count", "4294967296"],
        ),
        case(
            "element count above i64::MAX",
            s().tensor("blk.0.bad.weight", &[1 << 62, 2, 1, 1], GgmlType::F32),
            "dimension_overflow",
            &["element count"],
        ),
        case(
            "byte size overflows",
            s().tensor("blk.0.bad.weight", &[1 << 31, 1 << 31], GgmlType::F64),
            "dimension_overflow",
            &["byte size"],
        ),
        case(
            "absurd dimension",
            s().tensor("blk.0.bad.weight", &[u64::MAX], GgmlType::I8),
            "dimension_overflow",
            &["18446744073709551615"],
        ),
        case(
            "unknown ggml type",
            s().tensor_spec(TensorSpec {
                name: b"blk.0.bad.weight".to_vec(),
                dims: vec![64],
                type_id: 43,
                offset: None,
            }),
            "unknown_ggml_type",
            &["blk.0.bad.weight", "unknown ggml type 43"],
        ),
        case(
            "ggml type u32::MAX",
            s().tensor_spec(TensorSpec {
                name: b"blk.0.bad.weight".to_vec(),
                dims: vec![64],
                type_id: u32::MAX,
                offset: None,
            }),
            "unknown_ggml_type",
            &["4294967295"],
        ),
        case(
            "removed type Q4_2",
            s().tensor_spec(TensorSpec {
                name: b"blk.0.bad.weight".to_vec(),
                dims: vec![64],
                type_id: 4,
                offset: None,
            }),
            "removed_ggml_type",
            &["Q4_2", "no longer supports"],
        ),
        case(
            "removed type Q4_0_4_4",
            s().tensor_spec(TensorSpec {
                name: b"blk.0.bad.weight".to_vec(),
                dims: vec![64],
                type_id: 31,
                offset: None,
            }),
            "removed_ggml_type",
            &["Q4_0_4_4"],
        ),
        case(
            "row not a whole number of blocks",
            s().tensor("blk.0.bad.weight", &[64, 2], GgmlType::Q4_K),
            "block_size",
            &["blk.0.bad.weight", "Q4_K", "64 elements", "block size 256"],
        ),
        case(
            "duplicate tensor name",
            s().tensor("output.weight", &[64], GgmlType::F32),
            "duplicate_tensor",
            &["duplicate tensor name \"output.weight\""],
        ),
        case(
            "tensor name too long for ggml",
            s().tensor(&"x".repeat(64), &[64], GgmlType::F32),
            "tensor_name_length",
            &["64 bytes", "63"],
        ),
        case(
            "tensor name not UTF-8",
            s().tensor_spec(TensorSpec {
                name: b"blk.\xc3(.weight".to_vec(),
                dims: vec![64],
                type_id: 0,
                offset: None,
            }),
            "invalid_utf8",
            &["name of tensor 5"],
        ),
        case(
            "empty tensor name",
            s().tensor("", &[64], GgmlType::F32),
            "empty_name",
            &["name of tensor 5"],
        ),
        // --- tensor data ranges ---
        case(
            "offset past the end",
            with_offset(s(), 4, 1 << 40),
            "tensor_past_end",
            &["output.weight", "ends past end of file"],
        ),
        case(
            "offset near u64::MAX",
            with_offset(s(), 4, u64::MAX - 31),
            "tensor_past_end",
            &["output.weight", "ends past end of file"],
        ),
        case(
            "data section one byte short",
            GgufBuilder {
                data_len: Some(s().layout()[4].0 + 1152 - 1),
                ..s()
            },
            "tensor_past_end",
            &["output.weight"],
        ),
        case(
            "misaligned offset",
            with_offset(s(), 1, packed_offset(1) + 1),
            "misaligned_tensor",
            &["blk.0.attn_norm.weight", "alignment 32"],
        ),
        case(
            "tensors at the same offset",
            with_offset(s(), 1, 0),
            "overlapping_tensors",
            &["overlaps tensor \"token_embd.weight\""],
        ),
        case(
            "tensors partly overlapping",
            with_offset(s(), 1, packed_offset(1) - 64),
            "overlapping_tensors",
            &["blk.0.attn_norm.weight", "token_embd.weight"],
        ),
        case(
            "gap between tensors",
            with_offset(s(), 2, packed_offset(2) + 32),
            "tensor_layout",
            &["blk.0.attn_q.weight", "packed in file order"],
        ),
        // --- model metadata ---
        case(
            "no architecture",
            s().remove("general.architecture"),
            "missing_key",
            &["general.architecture"],
        ),
        case(
            "architecture not a string",
            s().set("general.architecture", Value::U32(1)),
            "wrong_value_type",
            &["general.architecture"],
        ),
        case(
            "empty architecture",
            s().set("general.architecture", Value::String(String::new())),
            "empty_value",
            &["general.architecture"],
        ),
        case(
            "block count 0",
            s().set("llama.block_count", Value::U32(0)),
            "metadata_range",
            &["llama.block_count", "= 0", "1..=512"],
        ),
        case(
            "block count above the cap",
            s().set("llama.block_count", Value::U32(100_000)),
            "metadata_range",
            &["llama.block_count", "100000"],
        ),
        case(
            "head count 0",
            s().set("llama.attention.head_count", Value::U32(0)),
            "metadata_range",
            &["llama.attention.head_count", "= 0"],
        ),
        case(
            "no head count",
            s().remove("llama.attention.head_count"),
            "missing_key",
            &["llama.attention.head_count"],
        ),
        case(
            "embedding length not divisible by heads",
            s().set("llama.attention.head_count", Value::U32(5)),
            "metadata_not_divisible",
            &["llama.embedding_length", "64", "5"],
        ),
        case(
            "kv head array of the wrong length",
            s().set(
                "llama.attention.head_count_kv",
                Value::Array(Array::U32(vec![2, 2])),
            ),
            "metadata_array_length",
            &["llama.attention.head_count_kv", "2 entries, expected 1"],
        ),
        case(
            "more kv heads than heads",
            s().set("llama.attention.head_count_kv", Value::U32(8)),
            "kv_heads",
            &[
                "llama.attention.head_count_kv",
                "8 key/value heads",
                "4 attention heads",
            ],
        ),
        case(
            "negative context length",
            s().set("llama.context_length", Value::I64(-1)),
            "metadata_range",
            &["llama.context_length", "= -1"],
        ),
        case(
            "tokens not an array of strings",
            s().set("tokenizer.ggml.tokens", Value::Array(Array::U32(vec![1]))),
            "wrong_value_type",
            &["tokenizer.ggml.tokens"],
        ),
    ];
    // Cases a builder cannot express, patched into the bytes.
    cases.push(n_dims_patched(u32::MAX));
    cases
}

/// The synthetic model plus one tensor whose n_dims field reads `n_dims`.
fn n_dims_patched(n_dims: u32) -> Case {
    let b = GgufBuilder::synthetic().tensor("blk.0.bad.weight", &[], GgmlType::F32);
    let mut bytes = b.build();
    let name = b"blk.0.bad.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name is in the file")
        + name.len();
    bytes[at..at + 4].copy_from_slice(&n_dims.to_le_bytes());
    Case {
        name: "n_dims u32::MAX",
        bytes,
        kind: "too_many_dimensions",
        needles: &["blk.0.bad.weight", "4294967295 dimensions"],
    }
}

#[test]
fn every_class_of_damage_is_rejected_by_name() {
    let cases = classes();
    for c in &cases {
        assert_rejected(c.name, &c.bytes, c.kind, c.needles);
    }
    // Each class also truncated at a few points: still rejected, never a panic.
    for c in &cases {
        for len in [c.bytes.len() / 2, c.bytes.len().saturating_sub(1)] {
            let result = run(c.name, &c.bytes[..len]);
            assert!(
                result.is_err(),
                "case {} truncated to {len}: accepted",
                c.name
            );
        }
    }
}

#[test]
fn nesting_up_to_the_cap_is_accepted() {
    let bytes = GgufBuilder::synthetic()
        .kv("test.deep", Value::Array(nested(4)))
        .build();
    let file = run("nesting 4 deep", &bytes).unwrap();
    assert!(file.get("test.deep").is_some());
}

#[test]
fn header_larger_than_the_cap_is_rejected() {
    // Five 14 MiB strings: each under the string cap, together over the
    // 64 MiB header cap.
    let big = "a".repeat(14 << 20);
    let mut b = GgufBuilder::synthetic();
    for i in 0..5 {
        b = b.kv(&format!("test.big{i}"), Value::String(big.clone()));
    }
    assert_rejected(
        "header over the cap",
        &b.build(),
        "header_cap",
        &["67108864"],
    );
}

#[test]
fn invalid_utf8_in_string_values_is_kept_not_refused() {
    let mut payload = 3u64.to_le_bytes().to_vec();
    payload.extend_from_slice(b"a\xffb");
    let bytes = GgufBuilder::synthetic()
        .kv_raw(b"test.bytes", 8, payload)
        .build();
    let file = run("non-UTF-8 value", &bytes).unwrap();
    assert_eq!(
        file.get("test.bytes").and_then(Value::as_str),
        Some("a\u{fffd}b")
    );
}

#[test]
fn invalid_utf8_in_string_arrays_is_kept_per_element() {
    // "é" split across two elements: the concatenation is valid UTF-8, the
    // elements are not, and each must be repaired on its own.
    let mut payload = raw_array_header(8, 3);
    for element in [&b"ok"[..], b"\xc3", b"\xa9"] {
        payload.extend_from_slice(&(element.len() as u64).to_le_bytes());
        payload.extend_from_slice(element);
    }
    let bytes = GgufBuilder::synthetic()
        .kv_raw(b"test.split", 9, payload)
        .build();
    let file = run("split UTF-8 in an array", &bytes).unwrap();
    let strings = file
        .get("test.split")
        .and_then(Value::as_array)
        .and_then(Array::as_strings)
        .unwrap();
    let strings: Vec<&str> = strings.iter().collect();
    assert_eq!(strings, ["ok", "\u{fffd}", "\u{fffd}"]);
}

#[test]
fn string_arrays_round_trip() {
    let file = run("synthetic", &synthetic()).unwrap();
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .and_then(Array::as_strings)
        .unwrap();
    assert_eq!(tokens.len(), 32);
    assert_eq!(tokens.get(2), Some("héllo"));
    assert_eq!(tokens.get(31), Some("tok31"));
    assert_eq!(tokens.get(32), None);
}

#[test]
fn version_2_is_accepted() {
    let bytes = GgufBuilder {
        version: 2,
        ..GgufBuilder::synthetic()
    }
    .build();
    assert_eq!(run("version 2", &bytes).unwrap().version, 2);
}

#[test]
fn default_alignment_applies_without_the_key() {
    let bytes = GgufBuilder::synthetic().remove("general.alignment").build();
    assert_eq!(run("no alignment key", &bytes).unwrap().alignment, 32);
}

#[test]
fn larger_alignment_is_honoured() {
    let b = GgufBuilder {
        alignment: 4096,
        ..GgufBuilder::synthetic().set("general.alignment", Value::U32(4096))
    };
    let file = run("alignment 4096", &b.build()).unwrap();
    assert_eq!(file.data_offset % 4096, 0);
    assert!(file
        .tensors
        .iter()
        .all(|t| (t.offset - file.data_offset).is_multiple_of(4096)));
    // The same tensors at 32-byte spacing are misaligned for 4096.
    let b = GgufBuilder::synthetic().set("general.alignment", Value::U32(4096));
    assert_rejected(
        "4096 claimed, 32 used",
        &b.build(),
        "misaligned_tensor",
        &["alignment 4096"],
    );
}

#[test]
fn a_file_without_tensors_is_valid() {
    let bytes = GgufBuilder::minimal_model("llama").build();
    let file = run("no tensors", &bytes).unwrap();
    assert!(file.tensors.is_empty());
    assert_eq!(file.data_offset, bytes.len() as u64);
    assert_eq!(file.model.quantization, "unknown");
}

#[test]
fn at_least_500_malformed_files_are_generated() {
    let truncations = synthetic().len();
    let total = truncations + 3000 + 1500 + classes().len() * 3;
    assert!(total >= 500, "only {total} malformed files");
    println!("malformed files: {truncations} truncations, 3000 bit flips, 1500 byte overwrites, {} hand-written classes (x3 with truncations)", classes().len());
}
