//! Reading app manifests: TOML text in, a validated
//! [`locara_core::manifest::Manifest`] out, or every problem of the file, each
//! with its line.
//!
//! The reader checks what needs the text or the store: TOML syntax, which
//! keys exist where (unknown keys with a "did you mean", forbidden keys with
//! why), the type of each value, and model names (as the store takes them,
//! [`ModelName`]). It hands the rest to
//! [`ManifestDraft::validate`](locara_core::manifest::ManifestDraft::validate)
//! and puts a line on each error from the key path it names.
//!
//! `docs/app-manifest.example.toml` is the documented full example.
//!
//! ```
//! use locara_daemon::manifest::parse_manifest;
//!
//! let text = r#"
//! id = "com.example.notes"
//! name = "Notes"
//! version = "1.0.0"
//!
//! [[models]]
//! ref = "smollm2:135m"
//! kvquality = "high"
//! mlock = true
//! "#;
//! let errors = parse_manifest(text, "notes.toml").unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "notes.toml:8: unknown key `models[0].kvquality`; did you mean `kv_quality`?\n\
//!      notes.toml:9: `models[0].mlock` is not allowed: Locara always maps model weights \
//!      and never locks pages, so the OS can reclaim them under memory pressure instead \
//!      of swapping out other apps"
//! );
//! ```

use crate::store::{ModelName, StoreError};
use locara_core::manifest::{
    forbidden_key_reason, index_path, key_path, suggest_key, Field, Manifest, ManifestDraft,
    ManifestError, ModelDraft, RequiresDraft, SpeculativeDraft, MODEL_KEYS, REQUIRES_KEYS,
    SPECULATIVE_KEYS, TOP_LEVEL_KEYS,
};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use toml::{Spanned, Value};

/// Largest manifest file, in bytes (256 KiB). A real manifest is well under
/// 4 KiB; the cap keeps a wrong path (a model file, say) from being read
/// whole into memory.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024;

/// One problem of a manifest file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestReadError {
    #[error("cannot read the manifest: {source}")]
    Io { source: io::Error },
    #[error("the manifest is {size} bytes long, more than the limit of {limit} bytes; is this the right file?")]
    TooLarge { size: u64, limit: u64 },
    #[error("the manifest is not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("invalid TOML: {message}")]
    Syntax { message: String },
    #[error("`{field}` = {value:?} is not a valid model name: {reason}")]
    InvalidModelRef {
        field: String,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Invalid(#[from] ManifestError),
}

impl ManifestReadError {
    /// Stable machine name of this error (the core's for
    /// [`ManifestReadError::Invalid`]).
    pub fn kind(&self) -> &'static str {
        match self {
            ManifestReadError::Io { .. } => "manifest_io",
            ManifestReadError::TooLarge { .. } => "manifest_too_large",
            ManifestReadError::NotUtf8 { .. } => "manifest_not_utf8",
            ManifestReadError::Syntax { .. } => "manifest_syntax",
            ManifestReadError::InvalidModelRef { .. } => "invalid_model_ref",
            ManifestReadError::Invalid(e) => e.kind(),
        }
    }

    /// The key path this error is about, where it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManifestReadError::InvalidModelRef { field, .. } => Some(field),
            ManifestReadError::Invalid(e) => Some(e.field()),
            ManifestReadError::Io { .. }
            | ManifestReadError::TooLarge { .. }
            | ManifestReadError::NotUtf8 { .. }
            | ManifestReadError::Syntax { .. } => None,
        }
    }
}

/// A problem and the line (from 1) it is on, where it has one: a missing
/// top-level key has none.
#[derive(Debug)]
pub struct LocatedError {
    pub line: Option<usize>,
    pub error: ManifestReadError,
}

impl LocatedError {
    /// Stable machine name of the error.
    pub fn kind(&self) -> &'static str {
        self.error.kind()
    }
}

/// Every problem found in one manifest, in line order, shown one per line as
/// `FILE:LINE: message`.
#[derive(Debug)]
pub struct ManifestErrors {
    /// The file name (or other source name) the lines refer to.
    pub source_name: String,
    /// At least one.
    pub errors: Vec<LocatedError>,
}

impl ManifestErrors {
    fn one(source_name: &str, line: Option<usize>, error: ManifestReadError) -> Self {
        ManifestErrors {
            source_name: source_name.to_string(),
            errors: vec![LocatedError { line, error }],
        }
    }
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match e.line {
                Some(line) => write!(f, "{}:{line}: {}", self.source_name, e.error)?,
                None => write!(f, "{}: {}", self.source_name, e.error)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// Reads and validates the manifest at `path` (at most
/// [`MAX_MANIFEST_BYTES`]).
pub fn read_manifest(path: &Path) -> Result<Manifest, ManifestErrors> {
    let name = path.display().to_string();
    let io_err = |source| ManifestErrors::one(&name, None, ManifestReadError::Io { source });
    let file = File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    // One byte more than the cap tells a file at the cap from a bigger one,
    // whatever the metadata said when it was opened.
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        let size = std::fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(bytes.len() as u64);
        return Err(too_large(&name, size));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = line_at(e.as_bytes(), offset);
        ManifestErrors::one(&name, Some(line), ManifestReadError::NotUtf8 { offset })
    })?;
    parse_manifest(&text, &name)
}

fn too_large(name: &str, size: u64) -> ManifestErrors {
    ManifestErrors::one(
        name,
        None,
        ManifestReadError::TooLarge {
            size,
            limit: MAX_MANIFEST_BYTES,
        },
    )
}

/// Parses and validates manifest text; `source_name` names it in errors.
pub fn parse_manifest(text: &str, source_name: &str) -> Result<Manifest, ManifestErrors> {
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_large(source_name, text.len() as u64));
    }
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| line_at(text.as_bytes(), s.start));
        // The message can run over lines; ours are one line each.
        let message = e.message().trim().replace('\n', "; ");
        ManifestErrors::one(source_name, line, ManifestReadError::Syntax { message })
    })?;
    let lines = Lines::of(text, &table);

    let mut reader = Reader::default();
    let draft = reader.manifest(&table);
    let mut errors = reader.errors;
    match draft.validate() {
        Ok(manifest) if errors.is_empty() => return Ok(manifest),
        Ok(_) => {}
        Err(core) => errors.extend(core.into_iter().map(ManifestReadError::Invalid)),
    }
    let mut located: Vec<LocatedError> = errors
        .into_iter()
        .map(|error| LocatedError {
            line: error.field().and_then(|f| lines.find(f)),
            error,
        })
        .collect();
    // Stable: errors on one line keep the order they were found in, and
    // those with no line (missing top-level keys) come first.
    located.sort_by_key(|e| e.line);
    Err(ManifestErrors {
        source_name: source_name.to_string(),
        errors: located,
    })
}

/// What the TOML type of a value is called in messages.
fn found(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Walks the parsed TOML into a [`ManifestDraft`], collecting the errors of
/// keys, types and model names.
#[derive(Default)]
struct Reader {
    errors: Vec<ManifestReadError>,
}

impl Reader {
    fn manifest(&mut self, table: &toml::Table) -> ManifestDraft {
        let mut draft = ManifestDraft::default();
        for (key, value) in self.known_keys("", table, TOP_LEVEL_KEYS) {
            let path = key_path("", key);
            match key {
                "id" => draft.id = self.string(&path, value),
                "name" => draft.name = self.string(&path, value),
                "version" => draft.version = self.string(&path, value),
                "models" => draft.models = self.models(&path, value),
                "speculative" => draft.speculative = self.speculative(&path, value),
                "requires" => draft.requires = self.requires(&path, value),
                "max_concurrency" => draft.max_concurrency = self.integer(&path, value),
                "priority" => draft.priority = self.string(&path, value),
                // `known_keys` gives only keys of TOP_LEVEL_KEYS, each handled
                // above (the example-file test uses every one).
                _ => {}
            }
        }
        draft
    }

    fn models(&mut self, path: &str, value: &Value) -> Field<Vec<ModelDraft>> {
        let Value::Array(items) = value else {
            self.wrong_type(path, "an array of tables ([[models]])", value);
            return Field::Invalid;
        };
        let mut models = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = index_path(path, i);
            let Some(table) = self.table(&path, item) else {
                // Keep the index of the ones after it right.
                models.push(ModelDraft {
                    reference: Field::Invalid,
                    ..ModelDraft::default()
                });
                continue;
            };
            let mut model = ModelDraft::default();
            for (key, value) in self.known_keys(&path, table, MODEL_KEYS) {
                let path = key_path(&path, key);
                match key {
                    "ref" => model.reference = self.model_ref(&path, value),
                    "role" => model.role = self.string(&path, value),
                    "context" => model.context = self.integer(&path, value),
                    "kv_quality" => model.kv_quality = self.string(&path, value),
                    "keep_loaded" => model.keep_loaded = self.boolean(&path, value),
                    _ => {}
                }
            }
            models.push(model);
        }
        Field::Given(models)
    }

    fn speculative(&mut self, path: &str, value: &Value) -> Field<SpeculativeDraft> {
        let Some(table) = self.table(path, value) else {
            return Field::Invalid;
        };
        let mut s = SpeculativeDraft::default();
        for (key, value) in self.known_keys(path, table, SPECULATIVE_KEYS) {
            let path = key_path(path, key);
            match key {
                "target" => s.target = self.model_ref(&path, value),
                "draft" => s.draft = self.model_ref(&path, value),
                _ => {}
            }
        }
        Field::Given(s)
    }

    fn requires(&mut self, path: &str, value: &Value) -> Field<RequiresDraft> {
        let Some(table) = self.table(path, value) else {
            return Field::Invalid;
        };
        let mut r = RequiresDraft::default();
        for (key, value) in self.known_keys(path, table, REQUIRES_KEYS) {
            if key == "memory_gb" {
                r.memory_gb = match value {
                    Value::Float(x) => Field::Given(*x),
                    // Whole numbers of GB are the usual way to write it.
                    Value::Integer(n) => Field::Given(*n as f64),
                    other => {
                        self.wrong_type(&key_path(path, key), "a number", other);
                        Field::Invalid
                    }
                };
            }
        }
        Field::Given(r)
    }

    /// The keys of `table` that are in `allowed`; reports the others, and
    /// any forbidden key however deep inside an unknown one.
    fn known_keys<'t>(
        &mut self,
        path: &str,
        table: &'t toml::Table,
        allowed: &'static [&'static str],
    ) -> Vec<(&'t str, &'t Value)> {
        let mut known = Vec::new();
        for (key, value) in table {
            let field = key_path(path, key);
            if let Some(reason) = forbidden_key_reason(key) {
                self.errors
                    .push(ManifestError::ForbiddenKey { field, reason }.into());
            } else if let Some(k) = allowed.iter().find(|k| **k == key.as_str()) {
                known.push((*k, value));
            } else {
                self.errors.push(
                    ManifestError::UnknownKey {
                        field: field.clone(),
                        suggestion: suggest_key(key, allowed),
                        allowed,
                    }
                    .into(),
                );
                self.forbidden_inside(&field, value);
            }
        }
        known
    }

    fn forbidden_inside(&mut self, path: &str, value: &Value) {
        match value {
            Value::Table(table) => {
                for (key, value) in table {
                    let field = key_path(path, key);
                    match forbidden_key_reason(key) {
                        Some(reason) => self
                            .errors
                            .push(ManifestError::ForbiddenKey { field, reason }.into()),
                        None => self.forbidden_inside(&field, value),
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.forbidden_inside(&index_path(path, i), item);
                }
            }
            Value::String(_)
            | Value::Integer(_)
            | Value::Float(_)
            | Value::Boolean(_)
            | Value::Datetime(_) => {}
        }
    }

    fn wrong_type(&mut self, path: &str, expected: &'static str, value: &Value) {
        self.errors.push(
            ManifestError::WrongType {
                field: path.to_string(),
                expected,
                found: found(value),
            }
            .into(),
        );
    }

    fn table<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v toml::Table> {
        match value {
            Value::Table(t) => Some(t),
            other => {
                self.wrong_type(path, "a table", other);
                None
            }
        }
    }

    fn string(&mut self, path: &str, value: &Value) -> Field<String> {
        match value {
            Value::String(s) => Field::Given(s.clone()),
            other => {
                self.wrong_type(path, "a string", other);
                Field::Invalid
            }
        }
    }

    fn integer(&mut self, path: &str, value: &Value) -> Field<i64> {
        match value {
            Value::Integer(n) => Field::Given(*n),
            other => {
                self.wrong_type(path, "an integer", other);
                Field::Invalid
            }
        }
    }

    fn boolean(&mut self, path: &str, value: &Value) -> Field<bool> {
        match value {
            Value::Boolean(b) => Field::Given(*b),
            other => {
                self.wrong_type(path, "a boolean (true or false)", other);
                Field::Invalid
            }
        }
    }

    /// A model name as the store takes it.
    fn model_ref(&mut self, path: &str, value: &Value) -> Field<String> {
        let Field::Given(s) = self.string(path, value) else {
            return Field::Invalid;
        };
        match s.parse::<ModelName>() {
            Ok(name) => Field::Given(name.into()),
            Err(e) => {
                let reason = match e {
                    StoreError::InvalidName { reason, .. } => reason.to_string(),
                    other => other.to_string(),
                };
                self.errors.push(ManifestReadError::InvalidModelRef {
                    field: path.to_string(),
                    value: s,
                    reason,
                });
                Field::Invalid
            }
        }
    }
}

/// The line (from 1) of byte `offset` of `text`.
fn line_at(text: &[u8], offset: usize) -> usize {
    let end = offset.min(text.len());
    text[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// The line of each key path of a manifest: of the key itself for keys and
/// tables, of the `[[models]]` header for each model.
///
/// `toml` 0.8 keeps spans only where a type asks for them with `Spanned`,
/// and a generic tree of `Spanned` values fails on implicit tables (dotted
/// keys, `[a.b]` before `[a]`) and on dates. So this is a second pass over
/// the text, guided by the already parsed table: it asks for the span of
/// every key, descends only into real tables and arrays, and skips every
/// other value. Lines are best effort: should a pass fail, errors are shown
/// without lines rather than not at all.
#[derive(Debug, Default)]
struct Lines(HashMap<String, usize>);

impl Lines {
    fn of(text: &str, table: &toml::Table) -> Lines {
        let mut lines = HashMap::new();
        // Array-of-tables elements have their header's span; keys do not
        // give it (the first key may be lines below, or absent).
        #[derive(serde::Deserialize)]
        struct Headers {
            #[serde(default)]
            models: Vec<Spanned<IgnoredAny>>,
        }
        if let Ok(h) = toml::from_str::<Headers>(text) {
            for (i, m) in h.models.iter().enumerate() {
                lines.insert(
                    index_path("models", i),
                    line_at(text.as_bytes(), m.span().start),
                );
            }
        }
        let seed = LineSeed {
            known: Known::Table(table),
            path: String::new(),
            text,
            lines: &mut lines,
        };
        if seed.deserialize(toml::de::Deserializer::new(text)).is_err() {
            lines.clear();
        }
        Lines(lines)
    }

    /// The line of `path`, or of the nearest table around it that has one
    /// (a missing key is shown at its table).
    fn find(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.0.get(path) {
                return Some(*line);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }
}

/// What the first pass found at a place, which says how to walk it.
#[derive(Clone, Copy)]
enum Known<'a> {
    Table(&'a toml::Table),
    Array(&'a [Value]),
    Other,
}

impl<'a> Known<'a> {
    fn of(value: &'a Value) -> Known<'a> {
        match value {
            Value::Table(t) => Known::Table(t),
            Value::Array(a) => Known::Array(a),
            Value::String(_)
            | Value::Integer(_)
            | Value::Float(_)
            | Value::Boolean(_)
            | Value::Datetime(_) => Known::Other,
        }
    }
}

struct LineSeed<'a, 'l> {
    known: Known<'a>,
    path: String,
    text: &'a str,
    lines: &'l mut HashMap<String, usize>,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.known {
            Known::Table(_) => d.deserialize_map(self),
            Known::Array(_) => d.deserialize_seq(self),
            Known::Other => d.deserialize_ignored_any(IgnoredAny).map(|_| ()),
        }
    }
}

impl<'de> Visitor<'de> for LineSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the shape of the parsed manifest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Known::Table(table) = self.known else {
            return Err(de::Error::custom("a table where the first pass found none"));
        };
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let path = key_path(&self.path, key.get_ref());
            let line = line_at(self.text.as_bytes(), key.span().start);
            // A table split over headers (`[a]`, `[a.b]`) is named more than
            // once; its first line is the one to show.
            self.lines.entry(path.clone()).or_insert(line);
            let known = table.get(key.get_ref()).map_or(Known::Other, Known::of);
            map.next_value_seed(LineSeed {
                known,
                path,
                text: self.text,
                lines: &mut *self.lines,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Known::Array(items) = self.known else {
            return Err(de::Error::custom(
                "an array where the first pass found none",
            ));
        };
        for (i, item) in items.iter().enumerate() {
            let seed = LineSeed {
                known: Known::of(item),
                path: index_path(&self.path, i),
                text: self.text,
                lines: &mut *self.lines,
            };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locara_core::manifest::{BudgetUnit, Role};
    use locara_core::KvType;

    const EXAMPLE: &str = include_str!("../../../docs/app-manifest.example.toml");

    const HEAD: &str = "id = \"com.example.notes\"\nname = \"Notes\"\nversion = \"1.0.0\"\n";

    /// The errors of `text` as (line, kind, message).
    fn problems(text: &str) -> Vec<(Option<usize>, &'static str, String)> {
        let errors = parse_manifest(text, "app.toml").expect_err("the manifest should be refused");
        assert!(!errors.errors.is_empty());
        errors
            .errors
            .iter()
            .map(|e| (e.line, e.kind(), e.error.to_string()))
            .collect()
    }

    fn only_problem(text: &str) -> (Option<usize>, &'static str, String) {
        let mut all = problems(text);
        assert_eq!(all.len(), 1, "{all:#?}");
        all.remove(0)
    }

    #[test]
    fn the_documented_example_parses() {
        let m = parse_manifest(EXAMPLE, "app-manifest.example.toml").unwrap();
        assert_eq!(m.id.as_str(), "com.example.notes");
        assert_eq!(m.name, "Example Notes");
        assert_eq!(m.version, "1.4.0");
        assert_eq!(m.max_concurrency, 2);
        assert_eq!(m.requires.memory_gb, Some(8.0));
        assert_eq!(m.priority, locara_core::threads::Priority::Interactive);
        assert_eq!(m.models.len(), 3);
        let chat = &m.models[0];
        assert_eq!(chat.reference, "qwen2.5:7b-instruct");
        assert_eq!(chat.role, Role::Chat);
        assert_eq!(chat.context, Some(16384));
        assert_eq!(chat.kv_type, None);
        assert!(chat.keep_loaded);
        assert_eq!(m.models[2].kv_type, Some(KvType::F16));
        let units = m.budgeted_models();
        assert_eq!(units.len(), 2);
        assert!(matches!(units[0], BudgetUnit::Speculative { target, draft }
                if target.reference == "qwen2.5:7b-instruct" && draft.reference == "qwen2.5:0.5b-instruct"));

        // The example shows every key there is, so each one's reading is
        // exercised here.
        let table: toml::Table = EXAMPLE.parse().unwrap();
        for key in TOP_LEVEL_KEYS {
            assert!(table.contains_key(*key), "{key}");
        }
        for (section, keys) in [
            ("speculative", SPECULATIVE_KEYS),
            ("requires", REQUIRES_KEYS),
        ] {
            for key in keys {
                assert!(table[section].get(key).is_some(), "{section}.{key}");
            }
        }
        for key in MODEL_KEYS {
            assert!(table["models"][0].get(key).is_some(), "models.{key}");
        }
    }

    #[test]
    fn a_minimal_manifest_gets_the_defaults() {
        let m =
            parse_manifest(&format!("{HEAD}[[models]]\nref = \"smollm2:135m\"\n"), "a").unwrap();
        assert_eq!(m.models[0].role, Role::Chat);
        assert_eq!(m.models[0].context, None);
        assert_eq!(m.models[0].kv_type, None);
        assert!(!m.models[0].keep_loaded);
        assert_eq!(m.max_concurrency, 1);
        assert_eq!(m.requires.memory_gb, None);
        assert_eq!(m.priority, locara_core::threads::Priority::Interactive);
        assert_eq!(m.speculative, None);
    }

    #[test]
    fn unknown_keys_name_the_key_the_line_and_a_near_miss() {
        let text = format!(
            "{HEAD}\n[[models]]\nref = \"smollm2:135m\"\n\n[[models]]\nref = \"gemma3:270m\"\nkvquality = \"high\"\n"
        );
        let (line, kind, msg) = only_problem(&text);
        assert_eq!(kind, "unknown_key");
        assert_eq!(line, Some(10));
        assert_eq!(
            msg,
            "unknown key `models[1].kvquality`; did you mean `kv_quality`?"
        );

        let (line, _, msg) = only_problem(&format!(
            "{HEAD}description = \"x\"\n[[models]]\nref = \"a\"\n"
        ));
        assert_eq!(line, Some(4));
        assert_eq!(
            msg,
            "unknown key `description`; allowed here: id, name, version, models, speculative, requires, max_concurrency, priority"
        );

        let (line, _, msg) = only_problem(&format!(
            "{HEAD}[[models]]\nref = \"a\"\n[requires]\nmemory = 4\n"
        ));
        assert_eq!(line, Some(7));
        assert!(
            msg.contains("`requires.memory`; did you mean `memory_gb`?"),
            "{msg}"
        );
    }

    #[test]
    fn forbidden_keys_are_refused_with_why_anywhere() {
        let text = format!(
            "{HEAD}mlock = true\nn_threads = 8\n\n[[models]]\nref = \"a\"\nn_gpu_layers = 99\nno-mmap = true\n\n[runtime]\nnuma = true\n"
        );
        let all = problems(&text);
        let got: Vec<(Option<usize>, &str)> = all.iter().map(|(l, k, _)| (*l, *k)).collect();
        assert_eq!(
            got,
            [
                (Some(4), "forbidden_key"),
                (Some(5), "forbidden_key"),
                (Some(9), "forbidden_key"),
                (Some(10), "forbidden_key"),
                (Some(12), "unknown_key"),
                (Some(13), "forbidden_key"),
            ],
            "{all:#?}"
        );
        assert_eq!(
            all[0].2,
            "`mlock` is not allowed: Locara always maps model weights and never locks pages, so \
             the OS can reclaim them under memory pressure instead of swapping out other apps"
        );
        assert!(all[1].2.starts_with("`n_threads` is not allowed: the runtime sizes CPU threads to the machine's performance cores"));
        assert!(
            all[2]
                .2
                .starts_with("`models[0].n_gpu_layers` is not allowed"),
            "{}",
            all[2].2
        );
        assert!(all[3]
            .2
            .starts_with("`models[0].no-mmap` is not allowed: Locara always maps"));
        assert!(
            all[5].2.starts_with("`runtime.numa` is not allowed"),
            "{}",
            all[5].2
        );

        // In [speculative] and [requires] too.
        let (line, kind, msg) = only_problem(&format!(
            "{HEAD}[[models]]\nref = \"a\"\n[requires]\nmemory_gb = 4\nuse_mlock = false\n"
        ));
        assert_eq!((line, kind), (Some(8), "forbidden_key"));
        assert!(msg.starts_with("`requires.use_mlock`"), "{msg}");
    }

    #[test]
    fn a_priority_is_read_and_checked_with_its_line() {
        let m = parse_manifest(
            &format!("{HEAD}priority = \"background\"\n[[models]]\nref = \"a\"\n"),
            "a",
        )
        .unwrap();
        assert_eq!(m.priority, locara_core::threads::Priority::Background);
        let (line, kind, msg) = only_problem(&format!(
            "{HEAD}priority = \"urgent\"\n[[models]]\nref = \"a\"\n"
        ));
        assert_eq!((line, kind), (Some(4), "invalid_priority"));
        assert!(
            msg.starts_with("`priority` = \"urgent\" is not a priority"),
            "{msg}"
        );
        let (line, kind, msg) =
            only_problem(&format!("{HEAD}priority = 1\n[[models]]\nref = \"a\"\n"));
        assert_eq!((line, kind), (Some(4), "wrong_type"));
        assert_eq!(msg, "`priority` must be a string, found an integer");
    }

    #[test]
    fn wrong_types_name_the_key_the_type_and_the_line() {
        let text = format!(
            "{HEAD}max_concurrency = \"4\"\n[[models]]\nref = \"a\"\ncontext = \"8k\"\nkeep_loaded = \"yes\"\n[requires]\nmemory_gb = \"8\"\n"
        );
        let all = problems(&text);
        let got: Vec<(Option<usize>, &str, &str)> =
            all.iter().map(|(l, k, m)| (*l, *k, m.as_str())).collect();
        assert_eq!(
            got,
            [
                (
                    Some(4),
                    "wrong_type",
                    "`max_concurrency` must be an integer, found a string"
                ),
                (
                    Some(7),
                    "wrong_type",
                    "`models[0].context` must be an integer, found a string"
                ),
                (
                    Some(8),
                    "wrong_type",
                    "`models[0].keep_loaded` must be a boolean (true or false), found a string"
                ),
                (
                    Some(10),
                    "wrong_type",
                    "`requires.memory_gb` must be a number, found a string"
                ),
            ]
        );

        let (line, _, msg) = only_problem(&format!("{HEAD}[models]\nref = \"a\"\n"));
        assert_eq!(line, Some(4));
        assert_eq!(
            msg,
            "`models` must be an array of tables ([[models]]), found a table"
        );

        let (line, _, msg) = only_problem(&format!("{HEAD}models = [\"a\"]\n"));
        assert_eq!(line, Some(4));
        assert_eq!(msg, "`models[0]` must be a table, found a string");

        // Dates are TOML values no key takes.
        let (line, _, msg) = only_problem(
            "id = \"com.example.notes\"\nname = \"Notes\"\nversion = 2024-01-01\n[[models]]\nref = \"a\"\n",
        );
        assert_eq!(line, Some(3));
        assert_eq!(msg, "`version` must be a string, found a date-time");
    }

    #[test]
    fn values_out_of_their_limits_are_named_with_the_limit() {
        let text = "id = \"Notes\"\nname = \"\"\nversion = \"1.0\"\nmax_concurrency = 100\n\
                    [[models]]\nref = \"a\"\ncontext = 100\nkv_quality = \"f16\"\nrole = \"chatbot\"\n\
                    [requires]\nmemory_gb = 0\n";
        let all = problems(text);
        let got: Vec<(Option<usize>, &str)> = all.iter().map(|(l, k, _)| (*l, *k)).collect();
        assert_eq!(
            got,
            [
                (Some(1), "invalid_app_id"),
                (Some(2), "invalid_app_name"),
                (Some(3), "invalid_version"),
                (Some(4), "concurrency_out_of_range"),
                (Some(7), "context_out_of_range"),
                (Some(8), "invalid_kv_quality"),
                (Some(9), "invalid_role"),
                (Some(11), "memory_out_of_range"),
            ],
            "{all:#?}"
        );
        assert!(
            all[0].2.contains("\"Notes\"") && all[0].2.contains("two"),
            "{}",
            all[0].2
        );
        assert!(
            all[3].2.contains("= 100") && all[3].2.contains("1 to 64"),
            "{}",
            all[3].2
        );
        assert!(
            all[4].2.contains("`models[0].context` = 100") && all[4].2.contains("256 to 1048576")
        );
        assert!(
            all[7].2.contains("= 0 ") && all[7].2.contains("at most 1024"),
            "{}",
            all[7].2
        );
    }

    #[test]
    fn several_errors_show_one_per_line_in_line_order() {
        let text = "name = \"Notes\"\nversion = \"1.0.0\"\n[[models]]\nctx = 4096\nref = \"Big Model\"\n[[models]]\nrole = \"chat\"\n";
        let errors = parse_manifest(text, "notes.toml").unwrap_err();
        assert_eq!(
            errors.to_string(),
            "notes.toml: missing required key `id`\n\
             notes.toml:4: unknown key `models[0].ctx`; did you mean `context`?\n\
             notes.toml:5: `models[0].ref` = \"Big Model\" is not a valid model name: \
             each part must start with a lowercase letter or a digit\n\
             notes.toml:6: missing required key `models[1].ref`"
        );
        let kinds: Vec<&str> = errors.errors.iter().map(LocatedError::kind).collect();
        assert_eq!(
            kinds,
            [
                "missing_key",
                "unknown_key",
                "invalid_model_ref",
                "missing_key"
            ]
        );
    }

    #[test]
    fn model_refs_are_store_names() {
        let (line, kind, msg) =
            only_problem(&format!("{HEAD}[[models]]\nref = \"../etc/passwd\"\n"));
        assert_eq!((line, kind), (Some(5), "invalid_model_ref"));
        assert!(
            msg.starts_with("`models[0].ref` = \"../etc/passwd\""),
            "{msg}"
        );

        let (line, kind, msg) = only_problem(&format!(
            "{HEAD}[[models]]\nref = \"a\"\n[speculative]\ntarget = \"a\"\ndraft = \"B:1\"\n"
        ));
        assert_eq!((line, kind), (Some(8), "invalid_model_ref"));
        assert!(msg.starts_with("`speculative.draft` = \"B:1\""), "{msg}");
    }

    #[test]
    fn speculative_rules_point_at_their_keys() {
        let models =
            "[[models]]\nref = \"big:7b\"\n[[models]]\nref = \"small:1b\"\nrole = \"draft\"\n";
        let ok =
            format!("{HEAD}{models}[speculative]\ntarget = \"big:7b\"\ndraft = \"small:1b\"\n");
        assert!(parse_manifest(&ok, "a").unwrap().speculative.is_some());

        let (line, kind, msg) = only_problem(&format!(
            "{HEAD}{models}[speculative]\ntarget = \"other:7b\"\ndraft = \"small:1b\"\n"
        ));
        assert_eq!((line, kind), (Some(10), "speculative_not_declared"));
        assert_eq!(
            msg,
            "`speculative.target` = \"other:7b\" is not one of the models declared in [[models]]"
        );

        let (line, kind, _) = only_problem(&format!(
            "{HEAD}{models}[speculative]\ntarget = \"small:1b\"\ndraft = \"small:1b\"\n"
        ));
        assert_eq!((line, kind), (Some(11), "speculative_same_model"));

        let all = problems(&format!(
            "{HEAD}{models}[speculative]\ntarget = \"small:1b\"\ndraft = \"big:7b\"\n"
        ));
        let got: Vec<(Option<usize>, &str)> = all.iter().map(|(l, k, _)| (*l, *k)).collect();
        assert_eq!(
            got,
            [
                (Some(10), "speculative_wrong_role"),
                (Some(11), "speculative_wrong_role")
            ]
        );
        assert!(all[1]
            .2
            .contains("a speculative draft needs a model with role draft"));

        let (line, kind, _) = only_problem(&format!(
            "{HEAD}{models}[speculative]\ntarget = \"big:7b\"\n"
        ));
        assert_eq!((line, kind), (Some(9), "missing_key"));

        // A draft with no pair, shown at its role.
        let (line, kind, _) = only_problem(&format!("{HEAD}{models}"));
        assert_eq!((line, kind), (Some(8), "unpaired_draft"));
    }

    #[test]
    fn dotted_keys_and_split_tables_get_their_lines() {
        let text = format!(
            "{HEAD}speculative.target = \"big:7b\"\nspeculative.drafts = \"x\"\n[requires.extra]\nmlock = true\n[requires]\nmemory_gb = 4\n[[models]]\nref = \"big:7b\"\n"
        );
        let all = problems(&text);
        let got: Vec<(Option<usize>, &str, &str)> =
            all.iter().map(|(l, k, m)| (*l, *k, m.as_str())).collect();
        assert_eq!(got.len(), 4, "{all:#?}");
        assert_eq!(got[0].0, Some(4)); // missing `speculative.draft`, at the table
        assert_eq!(got[0].1, "missing_key");
        assert_eq!(got[1].0, Some(5));
        assert!(got[1]
            .2
            .contains("`speculative.drafts`; did you mean `draft`?"));
        assert_eq!((got[2].0, got[2].1), (Some(6), "unknown_key"));
        assert_eq!((got[3].0, got[3].1), (Some(7), "forbidden_key"));
        assert!(got[3].2.starts_with("`requires.extra.mlock`"));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let (line, kind, msg) = only_problem(&format!("{HEAD}[[models]\nref = \"a\"\n"));
        assert_eq!((line, kind), (Some(4), "manifest_syntax"));
        assert!(msg.starts_with("invalid TOML: "), "{msg}");
        assert!(!msg.contains('\n'));

        let (line, kind, _) = only_problem(&format!("{HEAD}id = \"com.example.other\"\n"));
        assert_eq!((line, kind), (Some(4), "manifest_syntax"));
    }

    #[test]
    fn empty_text_lists_every_missing_key() {
        let errors = parse_manifest("", "empty.toml").unwrap_err();
        assert_eq!(
            errors.to_string(),
            "empty.toml: missing required key `id`\n\
             empty.toml: missing required key `name`\n\
             empty.toml: missing required key `version`\n\
             empty.toml: no models declared: add at least one [[models]] table with a `ref`"
        );
    }

    #[test]
    fn files_are_capped_and_must_be_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, EXAMPLE).unwrap();
        assert_eq!(
            read_manifest(&good).unwrap().id.as_str(),
            "com.example.notes"
        );

        let big = dir.path().join("big.toml");
        let mut text = EXAMPLE.to_string();
        while (text.len() as u64) <= MAX_MANIFEST_BYTES {
            text.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&big, &text).unwrap();
        let err = read_manifest(&big).unwrap_err();
        assert_eq!(err.errors[0].kind(), "manifest_too_large");
        let msg = err.to_string();
        assert!(msg.contains(&format!("{} bytes long", text.len())), "{msg}");
        assert!(msg.contains("262144"), "{msg}");
        assert_eq!(
            parse_manifest(&text, "big").unwrap_err().errors[0].kind(),
            "manifest_too_large"
        );

        let latin1 = dir.path().join("latin1.toml");
        std::fs::write(&latin1, b"id = \"com.example.notes\"\nname = \"Caf\xe9\"\n").unwrap();
        let err = read_manifest(&latin1).unwrap_err();
        assert_eq!(err.errors[0].kind(), "manifest_not_utf8");
        assert_eq!(err.errors[0].line, Some(2));
        assert!(err
            .to_string()
            .starts_with(&format!("{}:2: ", latin1.display())));

        let err = read_manifest(&dir.path().join("absent.toml")).unwrap_err();
        assert_eq!(err.errors[0].kind(), "manifest_io");
        assert!(err
            .to_string()
            .contains("absent.toml: cannot read the manifest"));
    }
}
