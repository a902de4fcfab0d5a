//! The ggml tensor types a GGUF file may use, with their block layouts.
//!
//! Ids, block sizes and bytes per block follow `type_traits` in ggml's
//! `ggml/src/ggml.c` and the block structs in `ggml/src/ggml-common.h` of the
//! llama.cpp revision the engine is pinned to (`llama-cpp-sys-2` 0.1.161). A
//! unit test pins every entry, so a change here is a deliberate one.

use std::fmt;

/// The storage type of a tensor, as ggml numbers it (`enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)] // the names are ggml's, and readers search for them
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    Q2_0,
}

/// ggml's super-block size for the k-quants and i-quants (`QK_K`).
const QK_K: u32 = 256;

/// One row of the table: type, ggml id, elements per block, bytes per block.
struct Traits {
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_size: u32,
    type_size: u32,
}

/// The table, in id order. Bytes per block are `sizeof(block_*)` from
/// `ggml-common.h`, written out as the sum of the struct's fields so a reader
/// can check them against the C source.
const TABLE: &[Traits] = &[
    t(GgmlType::F32, 0, "F32", 1, 4),
    t(GgmlType::F16, 1, "F16", 1, 2),
    t(GgmlType::Q4_0, 2, "Q4_0", 32, 2 + 16),
    t(GgmlType::Q4_1, 3, "Q4_1", 32, 2 * 2 + 16),
    t(GgmlType::Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
    t(GgmlType::Q5_1, 7, "Q5_1", 32, 2 * 2 + 4 + 16),
    t(GgmlType::Q8_0, 8, "Q8_0", 32, 2 + 32),
    t(GgmlType::Q8_1, 9, "Q8_1", 32, 2 * 2 + 32),
    t(
        GgmlType::Q2_K,
        10,
        "Q2_K",
        QK_K,
        2 * 2 + QK_K / 16 + QK_K / 4,
    ),
    t(
        GgmlType::Q3_K,
        11,
        "Q3_K",
        QK_K,
        2 + QK_K / 4 + QK_K / 8 + 12,
    ),
    t(GgmlType::Q4_K, 12, "Q4_K", QK_K, 2 * 2 + 12 + QK_K / 2),
    t(
        GgmlType::Q5_K,
        13,
        "Q5_K",
        QK_K,
        2 * 2 + 12 + QK_K / 2 + QK_K / 8,
    ),
    t(
        GgmlType::Q6_K,
        14,
        "Q6_K",
        QK_K,
        2 + QK_K / 16 + 3 * QK_K / 4,
    ),
    t(GgmlType::Q8_K, 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2),
    t(GgmlType::IQ2_XXS, 16, "IQ2_XXS", QK_K, 2 + QK_K / 8 * 2),
    t(
        GgmlType::IQ2_XS,
        17,
        "IQ2_XS",
        QK_K,
        2 + QK_K / 8 * 2 + QK_K / 32,
    ),
    t(GgmlType::IQ3_XXS, 18, "IQ3_XXS", QK_K, 2 + 3 * (QK_K / 8)),
    t(GgmlType::IQ1_S, 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    t(GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 2 + 16),
    t(
        GgmlType::IQ3_S,
        21,
        "IQ3_S",
        QK_K,
        2 + 13 * (QK_K / 32) + QK_K / 64,
    ),
    t(GgmlType::IQ2_S, 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    t(
        GgmlType::IQ4_XS,
        23,
        "IQ4_XS",
        QK_K,
        2 + 2 + QK_K / 64 + QK_K / 2,
    ),
    t(GgmlType::I8, 24, "I8", 1, 1),
    t(GgmlType::I16, 25, "I16", 1, 2),
    t(GgmlType::I32, 26, "I32", 1, 4),
    t(GgmlType::I64, 27, "I64", 1, 8),
    t(GgmlType::F64, 28, "F64", 1, 8),
    t(
        GgmlType::IQ1_M,
        29,
        "IQ1_M",
        QK_K,
        QK_K / 8 + QK_K / 16 + QK_K / 32,
    ),
    t(GgmlType::BF16, 30, "BF16", 1, 2),
    t(
        GgmlType::TQ1_0,
        34,
        "TQ1_0",
        QK_K,
        2 + QK_K / 64 + (QK_K - 4 * QK_K / 64) / 5,
    ),
    t(GgmlType::TQ2_0, 35, "TQ2_0", QK_K, 2 + QK_K / 4),
    t(GgmlType::MXFP4, 39, "MXFP4", 32, 1 + 16),
    t(GgmlType::NVFP4, 40, "NVFP4", 64, 64 / 16 + 64 / 2),
    t(GgmlType::Q1_0, 41, "Q1_0", 128, 2 + 128 / 8),
    t(GgmlType::Q2_0, 42, "Q2_0", 64, 2 + 64 / 4),
];

const fn t(ty: GgmlType, id: u32, name: &'static str, block_size: u32, type_size: u32) -> Traits {
    Traits {
        ty,
        id,
        name,
        block_size,
        type_size,
    }
}

/// Ids ggml once used and has since removed: a file that still carries one
/// cannot be loaded, and the message should say so rather than "unknown".
const REMOVED: &[(u32, &str)] = &[
    (4, "Q4_2"),
    (5, "Q4_3"),
    (31, "Q4_0_4_4"),
    (32, "Q4_0_4_8"),
    (33, "Q4_0_8_8"),
    (36, "IQ4_NL_4_4"),
    (37, "IQ4_NL_4_8"),
    (38, "IQ4_NL_8_8"),
];

/// Why a ggml type id was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlTypeIdError {
    /// ggml used this id once and removed support for it; the name is ggml's.
    Removed(&'static str),
    /// ggml has never used this id (or it is newer than the pinned llama.cpp).
    Unknown,
}

impl GgmlType {
    /// Every type this crate accepts, in ggml id order.
    pub const ALL: [GgmlType; 35] = {
        let mut all = [GgmlType::F32; 35];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].ty;
            i += 1;
        }
        all
    };

    fn traits(self) -> &'static Traits {
        // `TABLE` is in declaration order, so the discriminant indexes it; a
        // unit test checks that this holds for every variant.
        &TABLE[self as usize]
    }

    /// The type with ggml id `id`, or why it is not accepted.
    pub fn from_id(id: u32) -> Result<GgmlType, GgmlTypeIdError> {
        if let Some(row) = TABLE.iter().find(|row| row.id == id) {
            return Ok(row.ty);
        }
        match REMOVED.iter().find(|(removed, _)| *removed == id) {
            Some((_, name)) => Err(GgmlTypeIdError::Removed(name)),
            None => Err(GgmlTypeIdError::Unknown),
        }
    }

    /// ggml's numeric id for this type (`enum ggml_type`), as stored in GGUF.
    pub fn id(self) -> u32 {
        self.traits().id
    }

    /// The type's name as llama.cpp's tools print it (`"Q4_K"`, `"BF16"`).
    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// Elements per quantisation block (1 for plain types).
    pub fn block_size(self) -> u32 {
        self.traits().block_size
    }

    /// Bytes per block (`sizeof(block_*)` in ggml).
    pub fn type_size(self) -> u32 {
        self.traits().type_size
    }

    /// Bytes that `n_elements` elements of this type occupy, or `None` when
    /// `n_elements` is not a whole number of blocks or the size overflows `u64`.
    pub fn n_bytes(self, n_elements: u64) -> Option<u64> {
        let block = u64::from(self.block_size());
        if !n_elements.is_multiple_of(block) {
            return None;
        }
        (n_elements / block).checked_mul(u64::from(self.type_size()))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for GgmlType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// The name llama.cpp gives a `general.file_type` value (`enum llama_ftype`
/// in `include/llama.h`: "mostly" that type, except 1-d tensors), or `None`
/// for a value it does not define.
pub fn file_type_name(file_type: u32) -> Option<&'static str> {
    Some(match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_1_SOME_F16",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        40 => "Q1_0",
        41 => "Q2_0",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_index_the_table() {
        for (i, row) in TABLE.iter().enumerate() {
            assert_eq!(row.ty as usize, i, "{} is out of place", row.name);
            assert_eq!(GgmlType::ALL[i], row.ty);
        }
    }

    #[test]
    fn ids_round_trip() {
        for ty in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(ty.id()), Ok(ty));
        }
    }

    /// The (id, block size, bytes per block) of every type, as computed by
    /// hand from `ggml-common.h`; a typo in the table above fails here.
    #[test]
    fn block_layouts_match_ggml() {
        let expected: &[(GgmlType, u32, u32, u32)] = &[
            (GgmlType::F32, 0, 1, 4),
            (GgmlType::F16, 1, 1, 2),
            (GgmlType::Q4_0, 2, 32, 18),
            (GgmlType::Q4_1, 3, 32, 20),
            (GgmlType::Q5_0, 6, 32, 22),
            (GgmlType::Q5_1, 7, 32, 24),
            (GgmlType::Q8_0, 8, 32, 34),
            (GgmlType::Q8_1, 9, 32, 36),
            (GgmlType::Q2_K, 10, 256, 84),
            (GgmlType::Q3_K, 11, 256, 110),
            (GgmlType::Q4_K, 12, 256, 144),
            (GgmlType::Q5_K, 13, 256, 176),
            (GgmlType::Q6_K, 14, 256, 210),
            (GgmlType::Q8_K, 15, 256, 292),
            (GgmlType::IQ2_XXS, 16, 256, 66),
            (GgmlType::IQ2_XS, 17, 256, 74),
            (GgmlType::IQ3_XXS, 18, 256, 98),
            (GgmlType::IQ1_S, 19, 256, 50),
            (GgmlType::IQ4_NL, 20, 32, 18),
            (GgmlType::IQ3_S, 21, 256, 110),
            (GgmlType::IQ2_S, 22, 256, 82),
            (GgmlType::IQ4_XS, 23, 256, 136),
            (GgmlType::I8, 24, 1, 1),
            (GgmlType::I16, 25, 1, 2),
            (GgmlType::I32, 26, 1, 4),
            (GgmlType::I64, 27, 1, 8),
            (GgmlType::F64, 28, 1, 8),
            (GgmlType::IQ1_M, 29, 256, 56),
            (GgmlType::BF16, 30, 1, 2),
            (GgmlType::TQ1_0, 34, 256, 54),
            (GgmlType::TQ2_0, 35, 256, 66),
            (GgmlType::MXFP4, 39, 32, 17),
            (GgmlType::NVFP4, 40, 64, 36),
            (GgmlType::Q1_0, 41, 128, 18),
            (GgmlType::Q2_0, 42, 64, 18),
        ];
        assert_eq!(expected.len(), GgmlType::ALL.len());
        for &(ty, id, block, size) in expected {
            assert_eq!(
                (ty.id(), ty.block_size(), ty.type_size()),
                (id, block, size),
                "{ty}"
            );
        }
    }

    #[test]
    fn removed_and_unknown_ids_are_told_apart() {
        assert_eq!(GgmlType::from_id(4), Err(GgmlTypeIdError::Removed("Q4_2")));
        assert_eq!(GgmlType::from_id(5), Err(GgmlTypeIdError::Removed("Q4_3")));
        for id in 31..=33 {
            assert!(matches!(
                GgmlType::from_id(id),
                Err(GgmlTypeIdError::Removed(_))
            ));
        }
        assert_eq!(GgmlType::from_id(43), Err(GgmlTypeIdError::Unknown));
        assert_eq!(GgmlType::from_id(u32::MAX), Err(GgmlTypeIdError::Unknown));
    }

    #[test]
    fn n_bytes_checks_blocks_and_overflow() {
        assert_eq!(GgmlType::Q4_K.n_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4_K.n_bytes(100), None);
        assert_eq!(GgmlType::F64.n_bytes(u64::MAX / 4), None);
        assert_eq!(GgmlType::Q8_0.n_bytes(576 * 49152), Some(30_081_024));
    }
}
