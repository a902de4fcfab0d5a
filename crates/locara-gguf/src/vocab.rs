//! Whether two models share a vocabulary: the condition for one to draft
//! tokens for the other (speculative decoding). A draft's token ids are
//! handed to the target as they are, so the same id must be the same text
//! in both, and both must start and end sequences with the same tokens.
//!
//! Checked at `locara app install` (a manifest's `[speculative]` pair) and
//! again by the worker before it loads a draft. Families often pad their
//! larger models' vocabulary with unused entries (Qwen 2.5 0.5B and 7B
//! differ in length), so the lists may differ in length by up to
//! [`MAX_LENGTH_DIFFERENCE`]; every id both have must be the same token.

use crate::{Array, GgufFile, Value};

/// Most tokens the two vocabularies may differ by in length.
pub const MAX_LENGTH_DIFFERENCE: usize = 128;

/// How two vocabularies differ, naming the first difference found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VocabMismatch {
    #[error("the {which} model has no vocabulary (`tokenizer.ggml.tokens`)")]
    Missing { which: &'static str },
    #[error("tokenizer kinds differ (`tokenizer.ggml.model`): target {target:?}, draft {draft:?}")]
    Kind { target: String, draft: String },
    #[error(
        "vocabulary sizes differ by {} tokens (target {target}, draft {draft}); at most {} may differ",
        target.abs_diff(*draft),
        MAX_LENGTH_DIFFERENCE
    )]
    Length { target: usize, draft: usize },
    #[error("`{key}` differs: target {target:?}, draft {draft:?}")]
    SpecialToken {
        key: &'static str,
        target: Option<u64>,
        draft: Option<u64>,
    },
    #[error("token {id} differs: target {target:?}, draft {draft:?}")]
    Token {
        id: usize,
        target: String,
        draft: String,
    },
}

/// The special tokens that must agree: a draft that ends or starts a
/// sequence differently proposes tokens the target never would.
const SPECIAL_TOKENS: [&str; 3] = [
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
];

/// `Ok` when `draft` may propose tokens for `target`: the same tokenizer
/// kind, the same special tokens, vocabularies of about the same length
/// with the same text at every id both have.
pub fn check_draft_vocabulary(target: &GgufFile, draft: &GgufFile) -> Result<(), VocabMismatch> {
    let kind = |f: &GgufFile| match f.get("tokenizer.ggml.model") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let (target_kind, draft_kind) = (kind(target), kind(draft));
    if target_kind != draft_kind {
        return Err(VocabMismatch::Kind {
            target: target_kind,
            draft: draft_kind,
        });
    }
    for key in SPECIAL_TOKENS {
        let (t, d) = (special(target, key), special(draft, key));
        if t != d {
            return Err(VocabMismatch::SpecialToken {
                key,
                target: t,
                draft: d,
            });
        }
    }
    let tokens = |f: &GgufFile, which| match f.get("tokenizer.ggml.tokens") {
        Some(Value::Array(Array::String(tokens))) => Ok(tokens.clone()),
        _ => Err(VocabMismatch::Missing { which }),
    };
    let (t, d) = (tokens(target, "target")?, tokens(draft, "draft")?);
    if t.len().abs_diff(d.len()) > MAX_LENGTH_DIFFERENCE {
        return Err(VocabMismatch::Length {
            target: t.len(),
            draft: d.len(),
        });
    }
    for (id, (a, b)) in t.iter().zip(d.iter()).enumerate() {
        if a != b {
            return Err(VocabMismatch::Token {
                id,
                target: a.to_owned(),
                draft: b.to_owned(),
            });
        }
    }
    Ok(())
}

/// A special token's id (or a flag as 0/1); `None` when the key is absent.
fn special(file: &GgufFile, key: &str) -> Option<u64> {
    match file.get(key)? {
        Value::Bool(b) => Some(u64::from(*b)),
        v => v.as_integer().and_then(|n| u64::try_from(n).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::GgufBuilder;
    use crate::validate_bytes;

    fn file(builder: GgufBuilder) -> GgufFile {
        validate_bytes(&builder.build()).expect("a valid test file")
    }

    fn tokens(words: &[&str]) -> Value {
        Value::Array(Array::String(
            words
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .into(),
        ))
    }

    #[test]
    fn a_model_may_draft_for_itself() {
        let f = file(GgufBuilder::synthetic());
        assert_eq!(check_draft_vocabulary(&f, &f), Ok(()));
    }

    #[test]
    fn the_first_differing_token_is_named() {
        let target = file(GgufBuilder::synthetic());
        let mut words: Vec<String> = match target.get("tokenizer.ggml.tokens") {
            Some(Value::Array(Array::String(t))) => t.iter().map(str::to_owned).collect(),
            _ => unreachable!("the synthetic file has tokens"),
        };
        words[7] = "other".into();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        let draft = file(GgufBuilder::synthetic().set("tokenizer.ggml.tokens", tokens(&refs)));
        match check_draft_vocabulary(&target, &draft) {
            Err(VocabMismatch::Token { id: 7, draft, .. }) => assert_eq!(draft, "other"),
            other => panic!("expected token 7 to differ: {other:?}"),
        }
    }

    #[test]
    fn special_tokens_and_kinds_must_agree() {
        let target = file(GgufBuilder::synthetic());
        let eos = file(GgufBuilder::synthetic().kv("tokenizer.ggml.eos_token_id", Value::U32(3)));
        let err = check_draft_vocabulary(&target, &eos).unwrap_err();
        assert_eq!(
            err,
            VocabMismatch::SpecialToken {
                key: "tokenizer.ggml.eos_token_id",
                target: None,
                draft: Some(3)
            }
        );
        assert!(err.to_string().contains("eos_token_id"), "{err}");
        let llama = file(
            GgufBuilder::synthetic().set("tokenizer.ggml.model", Value::String("llama".into())),
        );
        assert!(matches!(
            check_draft_vocabulary(&target, &llama),
            Err(VocabMismatch::Kind { .. })
        ));
    }

    #[test]
    fn lengths_may_differ_a_little_but_not_a_lot() {
        let target = file(GgufBuilder::synthetic());
        let n = match target.get("tokenizer.ggml.tokens") {
            Some(Value::Array(Array::String(t))) => t.len(),
            _ => unreachable!(),
        };
        let words: Vec<String> = match target.get("tokenizer.ggml.tokens") {
            Some(Value::Array(Array::String(t))) => t.iter().map(str::to_owned).collect(),
            _ => unreachable!(),
        };
        let longer = |extra: usize| {
            let mut w = words.clone();
            w.extend((0..extra).map(|i| format!("<pad{i}>")));
            let refs: Vec<&str> = w.iter().map(String::as_str).collect();
            // The synthetic file's per-token arrays follow the length.
            file(
                GgufBuilder::synthetic()
                    .set("tokenizer.ggml.tokens", tokens(&refs))
                    .remove("tokenizer.ggml.scores")
                    .remove("tokenizer.ggml.token_type"),
            )
        };
        assert_eq!(
            check_draft_vocabulary(&target, &longer(MAX_LENGTH_DIFFERENCE)),
            Ok(())
        );
        assert_eq!(
            check_draft_vocabulary(&target, &longer(MAX_LENGTH_DIFFERENCE + 1)),
            Err(VocabMismatch::Length {
                target: n,
                draft: n + MAX_LENGTH_DIFFERENCE + 1
            })
        );
    }
}
