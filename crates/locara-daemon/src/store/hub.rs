//! Pulls from the Hugging Face Hub (or a mirror of it): the references users
//! type, the repository's file listing, the choice of a file for a
//! quantisation, and downloads that resume after an interruption.
//!
//! ```text
//! hf.co/ORG/REPO[:QUANT]                 a repository; the file for QUANT (default Q4_K_M)
//! huggingface.co/ORG/REPO[:QUANT]        the same
//! https://HOST/ORG/REPO/resolve/REV/F    one file of a repository (also /blob/)
//! ```
//!
//! The listing (`GET {endpoint}/api/models/ORG/REPO/tree/REV?recursive=true`)
//! gives each file's size and, for files stored in LFS (every GGUF), its
//! sha256 (`lfs.oid`): the download is checked against it. Files come from
//! `{endpoint}/ORG/REPO/resolve/REV/FILE`, which answers with redirects to a
//! CDN; a download interrupted part way is kept in the store's
//! `tmp/downloads/` under its sha256 and continued with an HTTP `Range`
//! request, by the next attempt or the next `locara pull`.
//!
//! `HF_TOKEN` is sent as `Authorization: Bearer` to the endpoint's host only
//! (never after a redirect to another host) and is never logged or printed;
//! `HF_ENDPOINT` replaces `https://huggingface.co`.

use super::{io_err, Progress, StoreError};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The Hub's address when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The quantisation pulled when a reference names none: the one Ollama and
/// llama.cpp's `-hf` pick too, about 4.8 bits per weight.
pub const DEFAULT_QUANT: &str = "Q4_K_M";

/// Partial downloads untouched this long are deleted by the next pull: a
/// pull given up a week ago is not coming back for its bytes.
const STALE_PARTIAL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most pages of a repository listing followed (the Hub pages at 1,000
/// entries; GGUF repositories have tens).
const MAX_LISTING_PAGES: usize = 50;

/// A Hub access token. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct HubToken(String);

impl HubToken {
    pub fn new(token: String) -> HubToken {
        HubToken(token)
    }
}

impl fmt::Debug for HubToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HubToken(<hidden>)")
    }
}

/// Where and how to reach the Hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Scheme and host, no trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// `HF_TOKEN`, for gated and private repositories.
    pub token: Option<HubToken>,
    /// Tries per file before a pull gives up; a try that received bytes
    /// resets the count (the next one continues where it stopped).
    pub attempts: u32,
    /// Wait before the next try, doubled each time.
    pub retry_delay: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
}

impl HubConfig {
    /// The Hub at `endpoint`, without a token.
    pub fn new(endpoint: &str) -> HubConfig {
        HubConfig {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: None,
            attempts: 5,
            retry_delay: Duration::from_secs(1),
            read_timeout: Duration::from_secs(60),
        }
    }

    /// `HF_ENDPOINT` (default [`DEFAULT_ENDPOINT`]) and `HF_TOKEN`.
    pub fn from_env() -> Result<HubConfig, StoreError> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(StoreError::HubReference {
                reference: "HF_ENDPOINT".to_string(),
                reason: format!("{endpoint:?} is not an http:// or https:// address"),
            });
        }
        let mut config = HubConfig::new(&endpoint);
        config.token = std::env::var("HF_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(HubToken);
        Ok(config)
    }
}

/// What a reference asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// Where the repository lives (the configured endpoint unless the
    /// reference is a URL of another host).
    pub endpoint: String,
    /// `ORG/REPO`.
    pub repo: String,
    /// A branch, tag or commit.
    pub revision: String,
    pub want: Want,
}

/// A quantisation to choose, or one file named by its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// `None`: [`DEFAULT_QUANT`], else the smallest sensible file.
    Quant(Option<String>),
    /// A path in the repository.
    File(String),
}

impl HubRef {
    /// Whether `text` is a Hub reference rather than a catalog name.
    pub fn looks_like(text: &str) -> bool {
        ["hf.co/", "huggingface.co/", "https://", "http://"]
            .iter()
            .any(|p| text.starts_with(p))
    }

    /// Parses `hf.co/ORG/REPO[:QUANT]`, `huggingface.co/…` or a file URL.
    /// The hosts `hf.co` and `huggingface.co` mean `config.endpoint` (so a
    /// mirror set with `HF_ENDPOINT` serves them); another host in a URL is
    /// that host.
    pub fn parse(text: &str, config: &HubConfig) -> Result<HubRef, StoreError> {
        let bad = |reason: String| StoreError::HubReference {
            reference: text.to_string(),
            reason,
        };
        let (scheme, rest) = match text.split_once("://") {
            Some((s @ ("http" | "https"), rest)) => (Some(s), rest),
            Some((s, _)) => return Err(bad(format!("the scheme {s:?} is not http or https"))),
            None => (None, text),
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let endpoint = match host {
            "hf.co" | "huggingface.co" | "www.huggingface.co" => config.endpoint.clone(),
            _ if scheme.is_some() => format!("{}://{host}", scheme.unwrap_or("https")),
            _ => return Err(bad("expected hf.co/ORG/REPO[:QUANT]".to_string())),
        };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        match parts.as_slice() {
            [org, repo_quant] => {
                let (repo, quant) = match repo_quant.split_once(':') {
                    Some((r, q)) => (r, Some(q)),
                    None => (*repo_quant, None),
                };
                check_segment(org, "organisation").map_err(&bad)?;
                check_segment(repo, "repository").map_err(&bad)?;
                if let Some(q) = quant {
                    if q.is_empty()
                        || !q
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    {
                        return Err(bad(format!(
                            "the quantisation {q:?} must be letters, digits, '_', '-' or '.'"
                        )));
                    }
                }
                Ok(HubRef {
                    endpoint,
                    repo: format!("{org}/{repo}"),
                    revision: "main".to_string(),
                    want: Want::Quant(quant.map(str::to_ascii_uppercase)),
                })
            }
            [org, repo, "resolve" | "blob", revision, file @ ..] if !file.is_empty() => {
                check_segment(org, "organisation").map_err(&bad)?;
                check_segment(repo, "repository").map_err(&bad)?;
                check_segment(revision, "revision").map_err(&bad)?;
                for f in file {
                    check_segment(f, "file path").map_err(&bad)?;
                }
                let file = file.join("/");
                if !file.to_ascii_lowercase().ends_with(".gguf") {
                    return Err(bad(format!("{file} is not a .gguf file")));
                }
                Ok(HubRef {
                    endpoint,
                    repo: format!("{org}/{repo}"),
                    revision: revision.to_string(),
                    want: Want::File(file),
                })
            }
            _ => Err(bad(
                "expected hf.co/ORG/REPO[:QUANT] or https://HOST/ORG/REPO/resolve/REVISION/FILE.gguf"
                    .to_string(),
            )),
        }
    }

    /// The address of `file` at this revision.
    pub fn resolve_url(&self, file: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            self.repo,
            self.revision,
            file.split('/').map(encode).collect::<Vec<_>>().join("/")
        )
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hf.co/{}", self.repo)?;
        match &self.want {
            Want::Quant(Some(q)) => write!(f, ":{q}"),
            Want::Quant(None) => Ok(()),
            Want::File(file) => write!(f, "/{file}"),
        }
    }
}

/// A path segment the Hub could hold and that cannot step out of a URL's
/// path: no `..`, no leading dot, no control characters or separators.
fn check_segment(s: &str, what: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && !s.starts_with('.')
        && !s.contains("..")
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the {what} {s:?} must be letters, digits, '_', '-', '.' or '+' (no '..')"
        ))
    }
}

/// Percent-encodes a path segment (the checked characters need none, but a
/// listing's file names are the Hub's, not ours).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One file of a repository listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// Path in the repository.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// The LFS object's sha256 (lowercase hex); `None` for a file kept in
    /// git itself, which the Hub publishes only a git hash for.
    pub sha256: Option<String>,
}

/// The files chosen for one model: one GGUF, or every part of a split one
/// in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubChoice {
    /// The quantisation label found in the file name (`Q4_K_M`), if any.
    pub quant: Option<String>,
    pub files: Vec<HubFile>,
    /// Why this file: "asked for", "the default", or what was chosen
    /// instead of the default.
    pub reason: String,
}

impl HubChoice {
    /// Holds the (single) file to a sha256 pinned elsewhere (a catalog
    /// alias). A listing that publishes another one means the file on the
    /// Hub is not the pinned one: refused before any download.
    pub fn pin(&mut self, reference: &HubRef, sha256: &str) -> Result<(), StoreError> {
        let [file] = self.files.as_mut_slice() else {
            return Err(StoreError::NoMatchingFile {
                reference: reference.to_string(),
                reason: format!(
                    "a sha256 is pinned for one file, but the model has {} parts",
                    self.files.len()
                ),
            });
        };
        if let Some(listed) = &file.sha256 {
            if listed != sha256 {
                return Err(StoreError::NoMatchingFile {
                    reference: reference.to_string(),
                    reason: format!(
                        "the Hub lists sha256 {listed} for {}, the catalog pins {sha256}; nothing was downloaded",
                        file.path
                    ),
                });
            }
        }
        file.sha256 = Some(sha256.to_string());
        Ok(())
    }

    /// Bytes of all files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Quantisations below about four bits per weight lose enough quality that
/// nobody should get one without asking: the "smallest sensible" choice
/// skips them when anything else is there.
fn low_bit(quant: &str) -> bool {
    ["Q2", "Q3", "IQ1", "IQ2", "IQ3", "TQ1", "TQ2"]
        .iter()
        .any(|p| quant.starts_with(p))
}

/// The quantisation labels llama.cpp's `llama-quantize` writes into file
/// names, longest first so `Q4_K_M` wins over `Q4_K`.
const QUANTS: &[&str] = &[
    "IQ4_XS", "IQ4_NL", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
    "IQ2_M", "IQ1_S", "IQ1_M", "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q3_K_M", "Q3_K_S",
    "Q3_K_L", "Q3_K_XL", "Q2_K_S", "Q2_K_L", "Q4_K_L", "Q5_K_L", "Q6_K_L", "Q4_0_4_4", "Q4_0_4_8",
    "Q4_0_8_8", "TQ1_0", "TQ2_0", "MXFP4", "Q2_K", "Q6_K", "Q4_K", "Q5_K", "Q3_K", "Q4_0", "Q4_1",
    "Q5_0", "Q5_1", "Q8_0", "BF16", "F16", "F32",
];

/// Whether `label` (upper case) stands in `name` (upper case) as a whole
/// token: `Q4_K` is not found in `Q4_K_M`, nor `Q4_XS` in `IQ4_XS`.
fn has_token(name: &str, label: &str) -> bool {
    let bytes = name.as_bytes();
    let mut from = 0;
    while let Some(i) = name[from..].find(label) {
        let start = from + i;
        let end = start + label.len();
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok =
            end == bytes.len() || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_');
        if before_ok && after_ok {
            return true;
        }
        from = start + 1;
    }
    false
}

/// The quantisation label in a file name, if it has a known one.
pub fn quant_of(file_name: &str) -> Option<&'static str> {
    let upper = file_name.to_ascii_uppercase();
    QUANTS.iter().copied().find(|q| has_token(&upper, q))
}

/// `name-00001-of-00003.gguf` → (`name`, 1, 3).
pub(crate) fn split_part(path: &str) -> Option<(&str, u32, u32)> {
    let stem = path.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    if no.len() != 5 || count.len() != 5 {
        return None;
    }
    let no: u32 = no.parse().ok()?;
    let count: u32 = count.parse().ok()?;
    (no >= 1 && no <= count).then_some((prefix, no, count))
}

/// Picks the model's files from a listing: the file named, or the one for
/// the quantisation asked (default [`DEFAULT_QUANT`], else the smallest of
/// four bits or more, else the smallest). A split GGUF counts as one
/// candidate whose parts must all be listed. Vision projectors (`mmproj`)
/// and importance matrices are not models.
pub fn choose(reference: &HubRef, files: &[HubFile]) -> Result<HubChoice, StoreError> {
    let no_file = |reason: String| StoreError::NoMatchingFile {
        reference: reference.to_string(),
        reason,
    };
    // Candidates: (key, files in order).
    let mut singles: Vec<Vec<HubFile>> = Vec::new();
    let mut splits: std::collections::BTreeMap<(String, u32), Vec<HubFile>> = Default::default();
    for f in files {
        let lower = f.path.to_ascii_lowercase();
        if !lower.ends_with(".gguf") || lower.contains("mmproj") || lower.contains("imatrix") {
            continue;
        }
        match split_part(&f.path) {
            Some((prefix, _, count)) if count > 1 => splits
                .entry((prefix.to_string(), count))
                .or_default()
                .push(f.clone()),
            _ => singles.push(vec![f.clone()]),
        }
    }
    let mut candidates = singles;
    for ((prefix, count), mut parts) in splits {
        parts.sort_by(|a, b| a.path.cmp(&b.path));
        let numbers: Vec<u32> = parts
            .iter()
            .filter_map(|p| split_part(&p.path).map(|(_, n, _)| n))
            .collect();
        if numbers != (1..=count).collect::<Vec<_>>() {
            if let Want::File(file) = &reference.want {
                if split_part(file).is_some_and(|(p, _, _)| p == prefix) {
                    return Err(no_file(format!(
                        "{prefix} is split into {count} files but the listing has parts {numbers:?}"
                    )));
                }
            }
            continue;
        }
        candidates.push(parts);
    }
    let label = |c: &[HubFile]| {
        let name = c[0].path.rsplit('/').next().unwrap_or(&c[0].path);
        quant_of(name)
    };
    let size = |c: &[HubFile]| c.iter().map(|f| f.size).sum::<u64>();
    let make = |c: Vec<HubFile>, reason: String| HubChoice {
        quant: label(&c).map(str::to_string),
        files: c,
        reason,
    };
    if candidates.is_empty() {
        return Err(no_file(
            "the repository lists no .gguf model file".to_string(),
        ));
    }
    match &reference.want {
        Want::File(file) => {
            let found = candidates
                .into_iter()
                .find(|c| c.iter().any(|f| &f.path == file));
            found
                .map(|c| make(c, "named in the URL".to_string()))
                .ok_or_else(|| {
                    no_file(format!(
                        "{file} is not in the listing of revision {}",
                        reference.revision
                    ))
                })
        }
        Want::Quant(asked) => {
            let wanted = asked.as_deref().unwrap_or(DEFAULT_QUANT);
            let mut matching: Vec<Vec<HubFile>> = candidates
                .iter()
                .filter(|c| {
                    let name = c[0].path.rsplit('/').next().unwrap_or(&c[0].path);
                    has_token(&name.to_ascii_uppercase(), wanted)
                })
                .cloned()
                .collect();
            // Several files of one quantisation (a model in two sizes, say):
            // the smallest, deterministically.
            matching.sort_by_key(|c| (size(c), c[0].path.clone()));
            if let Some(c) = matching.into_iter().next() {
                let reason = if asked.is_some() {
                    "asked for".to_string()
                } else {
                    "the default".to_string()
                };
                return Ok(make(c, reason));
            }
            if let Some(q) = asked {
                let mut have: Vec<String> = candidates
                    .iter()
                    .map(|c| label(c).unwrap_or("(no label)").to_string())
                    .collect();
                have.sort();
                have.dedup();
                return Err(no_file(format!(
                    "no file for {q}; the repository has {}",
                    have.join(", ")
                )));
            }
            let mut sorted = candidates;
            sorted.sort_by_key(|c| (size(c), c[0].path.clone()));
            let sensible = sorted
                .iter()
                .position(|c| label(c).is_some_and(|l| !low_bit(l)));
            let (index, why) = match sensible {
                Some(i) => (i, "the smallest of four bits or more"),
                None => (0, "the smallest file"),
            };
            let c = sorted.swap_remove(index);
            Ok(make(
                c,
                format!("no {DEFAULT_QUANT} file in the repository; {why}"),
            ))
        }
    }
}

/// The store name a pull gets unless the user gives one: the repository's
/// name in lower case without a `-GGUF` suffix, tagged with the
/// quantisation (`bartowski/Llama-3.2-1B-Instruct-GGUF`, `Q4_K_M` →
/// `llama-3.2-1b-instruct:q4_k_m`).
pub fn default_name(
    reference: &HubRef,
    choice: &HubChoice,
) -> Result<super::ModelName, StoreError> {
    let repo = reference.repo.rsplit('/').next().unwrap_or(&reference.repo);
    let lower = repo.to_ascii_lowercase();
    let base = ["-gguf", "_gguf", ".gguf"]
        .iter()
        .find_map(|s| lower.strip_suffix(s))
        .unwrap_or(&lower);
    super::tagged_name(base, choice.quant.as_deref().unwrap_or("latest"))
}

/// What a pull from the Hub will fetch, before anything is downloaded: the
/// repository's listing read, the file (or parts) chosen, a catalog
/// alias's pin held to the listing, and the store name. `locara pull` and
/// Ollama's `POST /api/pull` both start here, then call
/// [`Store::pull_hub`](super::Store::pull_hub).
pub struct PlannedPull {
    pub hub: Hub,
    pub reference: HubRef,
    pub choice: HubChoice,
    pub name: super::ModelName,
}

impl PlannedPull {
    /// Reads `reference`'s listing and chooses; `store_as` names the model
    /// (else [`default_name`]); `pinned` is an alias's sha256.
    pub fn new(
        config: HubConfig,
        reference: HubRef,
        store_as: Option<super::ModelName>,
        pinned: Option<&str>,
    ) -> Result<PlannedPull, StoreError> {
        let hub = Hub::new(config)?;
        let files = hub.list(&reference)?;
        let mut choice = choose(&reference, &files)?;
        if let Some(sha256) = pinned {
            choice.pin(&reference, sha256)?;
        }
        let name = match store_as {
            Some(n) => n,
            None => default_name(&reference, &choice)?,
        };
        Ok(PlannedPull {
            hub,
            reference,
            choice,
            name,
        })
    }
}

/// Talks to one Hub endpoint.
pub struct Hub {
    config: HubConfig,
    agent: ureq::Agent,
}

impl Hub {
    pub fn new(config: HubConfig) -> Result<Hub, StoreError> {
        let agent = super::agent(config.read_timeout, &config.endpoint)?;
        Ok(Hub { config, agent })
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// A GET with the token where it belongs: only to the configured
    /// endpoint (the Hub or the mirror `HF_ENDPOINT` names), never to the
    /// host of a URL the user pasted, and the agent keeps `Authorization`
    /// across redirects to the same host only.
    fn get(&self, url: &str) -> ureq::Request {
        let request = self.agent.get(url);
        match &self.config.token {
            Some(HubToken(t)) if self.ours(url) => {
                request.set("Authorization", &format!("Bearer {t}"))
            }
            _ => request,
        }
    }

    /// Whether `url` is on the configured endpoint (its whole origin: a
    /// prefix such as `https://huggingface.co.example` is not).
    fn ours(&self, url: &str) -> bool {
        url.strip_prefix(&self.config.endpoint)
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Every file of the repository at the reference's revision.
    pub fn list(&self, reference: &HubRef) -> Result<Vec<HubFile>, StoreError> {
        let mut url = format!(
            "{}/api/models/{}/tree/{}?recursive=true",
            reference.endpoint, reference.repo, reference.revision
        );
        let mut files = Vec::new();
        for _ in 0..MAX_LISTING_PAGES {
            let response = self
                .get(&url)
                .call()
                .map_err(|e| self.http_error(reference, &url, e))?;
            let next = response.header("Link").and_then(next_link);
            let body = response.into_string().map_err(|e| StoreError::Download {
                url: url.clone(),
                reason: format!("reading the listing: {e}"),
            })?;
            files.extend(parse_listing(&body).map_err(|reason| StoreError::Download {
                url: url.clone(),
                reason,
            })?);
            match next {
                Some(n) => url = n,
                None => return Ok(files),
            }
        }
        Err(StoreError::Download {
            url,
            reason: format!("the listing has more than {MAX_LISTING_PAGES} pages"),
        })
    }

    /// The header of the first file, read with the GGUF guard from the
    /// start of its download (a few MiB; the rest is not fetched), so
    /// `locara plan`'s verdict can be given before the download.
    pub fn header(
        &self,
        reference: &HubRef,
        file: &HubFile,
    ) -> Result<locara_gguf::GgufFile, StoreError> {
        let url = reference.resolve_url(&file.path);
        let response = self
            .get(&url)
            .set("Range", "bytes=0-")
            .call()
            .map_err(|e| self.http_error(reference, &url, e))?;
        let reader = BufReader::with_capacity(1 << 20, response.into_reader());
        locara_gguf::validate_reader(reader, file.size).map_err(|source| StoreError::InvalidModel {
            path: url.into(),
            source,
        })
    }

    /// Downloads `file` into `partial`, continuing what is there, and
    /// checks its size and sha256. A wrong checksum deletes the partial
    /// file (its bytes are no use to the next try).
    pub(super) fn download(
        &self,
        reference: &HubRef,
        file: &HubFile,
        partial: &Path,
        label: &str,
        progress: &mut dyn Progress,
    ) -> Result<String, StoreError> {
        let url = reference.resolve_url(&file.path);
        let handle = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(partial)
            .map_err(io_err("creating", partial))?;
        // Two pulls of the same file (under two names) share the partial
        // file: one waits for the other, then finds it complete.
        handle.lock().map_err(io_err("locking", partial))?;
        let mut out = Resumable::open(handle, partial, file.size)?;
        progress.begin(label, Some(file.size));
        progress.advance(out.written);
        let mut failures = 0;
        let mut delay = self.config.retry_delay;
        while out.written < file.size {
            let before = out.written;
            let result = self.fetch_range(reference, &url, &mut out, progress);
            match result {
                Ok(()) => {}
                Err(e) if retryable(&e) => {
                    if out.written > before {
                        failures = 0;
                    }
                    failures += 1;
                    if failures >= self.config.attempts {
                        progress.end();
                        return Err(e);
                    }
                    tracing::warn!(url = %url, error = %e, "download interrupted; continuing");
                    std::thread::sleep(delay);
                    delay = delay.saturating_mul(2);
                }
                Err(e) => {
                    progress.end();
                    return Err(e);
                }
            }
        }
        progress.end();
        let (size, sha) = out.finish()?;
        let mismatch = size != file.size
            || file
                .sha256
                .as_ref()
                .is_some_and(|expected| *expected != sha);
        if mismatch {
            let _ = fs::remove_file(partial);
            return Err(StoreError::HubChecksum {
                url,
                expected_size: file.size,
                expected_sha256: file.sha256.clone().unwrap_or_else(|| "(none)".to_string()),
                size,
                sha256: sha,
            });
        }
        Ok(sha)
    }

    /// One GET from where `out` stands to the end.
    fn fetch_range(
        &self,
        reference: &HubRef,
        url: &str,
        out: &mut Resumable,
        progress: &mut dyn Progress,
    ) -> Result<(), StoreError> {
        let mut request = self.get(url);
        if out.written > 0 {
            request = request.set("Range", &format!("bytes={}-", out.written));
        }
        let response = match request.call() {
            Ok(r) => r,
            // The partial file is longer than the object: start again.
            Err(ureq::Error::Status(416, _)) => {
                out.restart()?;
                return Err(StoreError::Download {
                    url: url.to_string(),
                    reason: "the server refused the range; starting the file again".to_string(),
                });
            }
            Err(e) => return Err(self.http_error(reference, url, e)),
        };
        match response.status() {
            206 => {
                let start = response
                    .header("Content-Range")
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(out.written) {
                    out.restart()?;
                    return Err(StoreError::Download {
                        url: url.to_string(),
                        reason: format!(
                            "asked for bytes from {} and got Content-Range {:?}",
                            out.written,
                            response.header("Content-Range")
                        ),
                    });
                }
            }
            // The server ignored the range: the body is the whole file.
            _ if out.written > 0 => out.restart()?,
            _ => {}
        }
        let mut body = response.into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    out.flush()?;
                    return Err(StoreError::Download {
                        url: url.to_string(),
                        reason: format!("connection lost after {} bytes: {e}", out.written),
                    });
                }
            };
            out.write(&buf[..n])?;
            progress.advance(n as u64);
        }
        out.flush()?;
        if out.written < out.expected {
            return Err(StoreError::Download {
                url: url.to_string(),
                reason: format!(
                    "the response ended at byte {} of {}",
                    out.written, out.expected
                ),
            });
        }
        Ok(())
    }

    /// A failed request as the user needs it: gated, not found, or the
    /// network. The token never appears; URLs are shown without queries
    /// (a CDN's signed address carries credentials of its own).
    fn http_error(&self, reference: &HubRef, url: &str, e: ureq::Error) -> StoreError {
        let shown = url.split('?').next().unwrap_or(url).to_string();
        match e {
            ureq::Error::Status(status @ (401 | 403), response) => StoreError::HubAccess {
                reference: reference.to_string(),
                url: shown,
                status,
                token_sent: self.config.token.is_some() && self.ours(url),
                token_withheld: self.config.token.is_some() && !self.ours(url),
                message: hub_message(response),
            },
            ureq::Error::Status(404, response) => StoreError::HubNotFound {
                reference: reference.to_string(),
                url: shown,
                message: hub_message(response),
            },
            ureq::Error::Status(status, response) => StoreError::Download {
                url: shown,
                reason: format!("HTTP {status}: {}", hub_message(response)),
            },
            ureq::Error::Transport(t) => StoreError::Download {
                url: shown,
                reason: format!(
                    "network: {}",
                    t.to_string()
                        .replace(url, "")
                        .trim_start_matches([':', ' '])
                ),
            },
        }
    }
}

/// Whether another try may succeed: the network or the server failed, not
/// the request (access, a missing file) or the disk.
fn retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Download { .. })
}

/// The Hub's own words for an error (`X-Error-Message`), else the status
/// text.
fn hub_message(response: ureq::Response) -> String {
    response
        .header("X-Error-Message")
        .map(str::to_string)
        .unwrap_or_else(|| response.status_text().to_string())
}

/// `<URL>; rel="next"` of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// The tree listing's JSON: `[{"type": "file", "path", "size", "lfs":
/// {"oid", "size"}}, {"type": "directory", …}]`.
fn parse_listing(body: &str) -> Result<Vec<HubFile>, String> {
    let items: Vec<serde_json::Value> =
        serde_json::from_str(body).map_err(|e| format!("the listing is not a JSON array: {e}"))?;
    let mut files = Vec::new();
    for item in items {
        if item["type"].as_str() != Some("file") {
            continue;
        }
        let path = item["path"]
            .as_str()
            .ok_or("a listed file has no path")?
            .to_string();
        let lfs = &item["lfs"];
        let size = lfs["size"]
            .as_u64()
            .or_else(|| item["size"].as_u64())
            .ok_or_else(|| format!("{path} has no size"))?;
        let sha256 = match lfs["oid"].as_str() {
            Some(oid) => {
                let oid = oid.strip_prefix("sha256:").unwrap_or(oid);
                if oid.len() != 64 || !oid.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!("{path}: LFS oid {oid:?} is not a sha256"));
                }
                Some(oid.to_ascii_lowercase())
            }
            None => None,
        };
        files.push(HubFile { path, size, sha256 });
    }
    Ok(files)
}

/// A partial download being continued: its bytes so far are hashed when it
/// is opened, new bytes as they are written.
struct Resumable {
    file: File,
    path: std::path::PathBuf,
    hasher: Sha256,
    written: u64,
    expected: u64,
}

impl Resumable {
    fn open(file: File, path: &Path, expected: u64) -> Result<Resumable, StoreError> {
        let len = file.metadata().map_err(io_err("reading", path))?.len();
        let mut out = Resumable {
            file,
            path: path.to_path_buf(),
            hasher: Sha256::new(),
            written: 0,
            expected,
        };
        if len > expected {
            out.restart()?;
            return Ok(out);
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut reader = (&out.file).take(len);
        loop {
            let n = reader.read(&mut buf).map_err(io_err("reading", path))?;
            if n == 0 {
                break;
            }
            out.hasher.update(&buf[..n]);
            out.written += n as u64;
        }
        out.file
            .seek(SeekFrom::Start(out.written))
            .map_err(io_err("reading", path))?;
        Ok(out)
    }

    fn restart(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(0)
            .map_err(io_err("truncating", &self.path))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err("truncating", &self.path))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(bytes)
            .map_err(|e| super::write_error(&self.path, e))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.file
            .flush()
            .map_err(|e| super::write_error(&self.path, e))
    }

    fn finish(self) -> Result<(u64, String), StoreError> {
        self.file
            .sync_all()
            .map_err(|e| super::write_error(&self.path, e))?;
        Ok((self.written, hex::encode(self.hasher.finalize())))
    }
}

/// The partial file of `file`: by its sha256 where the Hub publishes one
/// (so a changed file never continues an old one's bytes), else by its URL.
pub(super) fn partial_name(reference: &HubRef, file: &HubFile) -> String {
    match &file.sha256 {
        Some(sha) => format!("{sha}.part"),
        None => {
            let url = reference.resolve_url(&file.path);
            format!("url-{}.part", hex::encode(Sha256::digest(url.as_bytes())))
        }
    }
}

/// Deletes partial downloads nobody touched for [`STALE_PARTIAL`].
pub(super) fn sweep_stale(dir: &Path) {
    let Ok(items) = fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    for item in items.flatten() {
        let old = item
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_PARTIAL);
        if old && item.file_name().to_string_lossy().ends_with(".part") {
            let _ = fs::remove_file(item.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HubConfig {
        HubConfig::new("https://mirror.example")
    }

    #[test]
    fn references_parse_into_repo_revision_and_want() {
        let r = HubRef::parse(
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:q4_k_m",
            &config(),
        )
        .unwrap();
        assert_eq!(r.endpoint, "https://mirror.example");
        assert_eq!(r.repo, "bartowski/Llama-3.2-1B-Instruct-GGUF");
        assert_eq!(r.revision, "main");
        assert_eq!(r.want, Want::Quant(Some("Q4_K_M".to_string())));
        let r = HubRef::parse("huggingface.co/org/repo", &config()).unwrap();
        assert_eq!(r.want, Want::Quant(None));
        let r = HubRef::parse(
            "https://huggingface.co/org/repo/resolve/abc123/sub/model-Q8_0.gguf?download=true",
            &config(),
        )
        .unwrap();
        assert_eq!(r.endpoint, "https://mirror.example");
        assert_eq!(r.revision, "abc123");
        assert_eq!(r.want, Want::File("sub/model-Q8_0.gguf".to_string()));
        let r = HubRef::parse("http://127.0.0.1:8080/o/r/blob/main/m.gguf", &config()).unwrap();
        assert_eq!(r.endpoint, "http://127.0.0.1:8080");
        assert_eq!(
            r.resolve_url("m.gguf"),
            "http://127.0.0.1:8080/o/r/resolve/main/m.gguf"
        );
    }

    #[test]
    fn references_that_could_escape_or_mean_nothing_are_refused() {
        for bad in [
            "hf.co/org",
            "hf.co/../etc:x",
            "hf.co/org/re po",
            "hf.co/org/repo:",
            "hf.co/org/repo:q/4",
            "ftp://hf.co/org/repo",
            "https://hf.co/org/repo/resolve/main/../../x.gguf",
            "https://hf.co/org/repo/resolve/main/readme.md",
            "example.com/org/repo",
        ] {
            let err = HubRef::parse(bad, &config()).unwrap_err();
            assert_eq!(err.kind(), "invalid_reference", "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn quant_labels_are_whole_tokens() {
        assert_eq!(
            quant_of("Llama-3.2-1B-Instruct-Q4_K_M.gguf"),
            Some("Q4_K_M")
        );
        assert_eq!(quant_of("model.q4_k_s.gguf"), Some("Q4_K_S"));
        assert_eq!(quant_of("model-IQ4_XS.gguf"), Some("IQ4_XS"));
        assert_eq!(quant_of("model-f16.gguf"), Some("F16"));
        assert_eq!(quant_of("model-bf16.gguf"), Some("BF16"));
        assert_eq!(quant_of("model.gguf"), None);
        assert!(!has_token("MODEL-Q4_K_M.GGUF", "Q4_K"));
        assert!(!has_token("MODEL-IQ4_XS.GGUF", "Q4_XS"));
    }

    fn file(path: &str, size: u64) -> HubFile {
        HubFile {
            path: path.to_string(),
            size,
            sha256: Some("a".repeat(64)),
        }
    }

    fn repo(want: Want) -> HubRef {
        HubRef {
            endpoint: "https://x".to_string(),
            repo: "o/r".to_string(),
            revision: "main".to_string(),
            want,
        }
    }

    #[test]
    fn the_default_is_q4_k_m_else_the_smallest_sensible_file() {
        let listing = vec![
            file("README.md", 10),
            file("m-Q2_K.gguf", 100),
            file("m-Q4_K_M.gguf", 300),
            file("m-Q8_0.gguf", 500),
            file("mmproj-m-f16.gguf", 50),
        ];
        let c = choose(&repo(Want::Quant(None)), &listing).unwrap();
        assert_eq!(c.files[0].path, "m-Q4_K_M.gguf");
        assert_eq!(c.reason, "the default");
        let without: Vec<_> = listing
            .iter()
            .filter(|f| !f.path.contains("Q4_K_M"))
            .cloned()
            .collect();
        let c = choose(&repo(Want::Quant(None)), &without).unwrap();
        assert_eq!(c.files[0].path, "m-Q8_0.gguf", "Q2_K is not sensible");
        assert!(c.reason.contains("four bits"), "{}", c.reason);
        let c = choose(&repo(Want::Quant(Some("Q8_0".into()))), &listing).unwrap();
        assert_eq!(c.quant.as_deref(), Some("Q8_0"));
        let err = choose(&repo(Want::Quant(Some("Q5_K_M".into()))), &listing).unwrap_err();
        assert_eq!(err.kind(), "no_matching_file");
        assert!(
            err.to_string().contains("Q2_K, Q4_K_M, Q8_0"),
            "names what there is: {err}"
        );
        let err = choose(&repo(Want::Quant(None)), &[file("README.md", 1)]).unwrap_err();
        assert!(err.to_string().contains("no .gguf"), "{err}");
    }

    #[test]
    fn split_files_are_one_candidate_and_must_be_complete() {
        let listing = vec![
            file("Q8_0/m-Q8_0-00002-of-00002.gguf", 200),
            file("Q8_0/m-Q8_0-00001-of-00002.gguf", 300),
            file("m-Q4_K_M-00001-of-00003.gguf", 100),
            file("m-Q4_K_M-00003-of-00003.gguf", 100),
        ];
        let c = choose(&repo(Want::Quant(Some("Q8_0".into()))), &listing).unwrap();
        let paths: Vec<_> = c.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Q8_0/m-Q8_0-00001-of-00002.gguf",
                "Q8_0/m-Q8_0-00002-of-00002.gguf"
            ]
        );
        assert_eq!(c.size(), 500);
        // The Q4_K_M split lacks its second part: it is no candidate.
        let c = choose(&repo(Want::Quant(None)), &listing).unwrap();
        assert_eq!(c.quant.as_deref(), Some("Q8_0"));
        let err = choose(
            &repo(Want::File("m-Q4_K_M-00001-of-00003.gguf".into())),
            &listing,
        )
        .unwrap_err();
        assert!(err.to_string().contains("parts [1, 3]"), "{err}");
    }

    #[test]
    fn listings_give_lfs_sha256_and_sizes() {
        let body = r#"[
            {"type":"directory","oid":"x","size":0,"path":"sub"},
            {"type":"file","oid":"0123","size":1519,"path":"README.md"},
            {"type":"file","oid":"4567","size":135,"path":"m.gguf",
             "lfs":{"oid":"B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53","size":98362432,"pointerSize":135}}
        ]"#;
        let files = parse_listing(body).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].sha256, None);
        assert_eq!(files[1].size, 98362432);
        assert_eq!(
            files[1].sha256.as_deref(),
            Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
        );
        assert!(
            parse_listing(r#"[{"type":"file","path":"m","lfs":{"oid":"zz","size":1}}]"#).is_err()
        );
        assert_eq!(
            next_link(r#"<https://h/api/models/o/r/tree/main?cursor=abc>; rel="next""#).as_deref(),
            Some("https://h/api/models/o/r/tree/main?cursor=abc")
        );
    }

    #[test]
    fn default_names_are_the_repository_and_the_quantisation() {
        let r = HubRef::parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", &config()).unwrap();
        let choice = HubChoice {
            quant: Some("Q4_K_M".to_string()),
            files: vec![file("x.gguf", 1)],
            reason: String::new(),
        };
        assert_eq!(
            default_name(&r, &choice).unwrap().as_str(),
            "llama-3.2-1b-instruct:q4_k_m"
        );
        let r = HubRef::parse(&format!("hf.co/o/{}", "A".repeat(200)), &config()).unwrap();
        let name = default_name(&r, &choice).unwrap();
        assert!(name.as_str().len() <= crate::store::MAX_NAME_LEN);
        assert!(name.as_str().ends_with(":q4_k_m"));
    }

    #[test]
    fn the_token_is_never_shown() {
        let mut c = config();
        c.token = Some(HubToken::new("hf_secret".to_string()));
        assert!(!format!("{c:?}").contains("hf_secret"));
    }
}
