//! `Store::pull_hub` and `Hub` against a local server that answers the Hub's
//! routes (the tree listing, `resolve` with a redirect to a CDN host, LFS
//! sha256s, `Range` requests, gated repositories) for files made from the
//! real test models (`LOCARA_TEST_MODELS`) and synthetic split GGUFs.

use locara_daemon::store::hub::{choose, default_name, Hub, HubConfig, HubRef, HubToken};
use locara_daemon::store::{validate_parts, NoProgress, Store, StoreError};
use locara_daemon::testing::hub::{sha_hex, FakeHub, Fault, TOKEN as FAKE_TOKEN};
use locara_gguf::testing::GgufBuilder;
use locara_gguf::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The real test models, or `None` (saying why) where they are not set up.
fn test_model(name: &str) -> Option<Arc<Vec<u8>>> {
    let Some(dir) = std::env::var_os("LOCARA_TEST_MODELS") else {
        eprintln!(
            "skipped: LOCARA_TEST_MODELS is not set, so the real test models are not available"
        );
        return None;
    };
    Some(Arc::new(std::fs::read(Path::new(&dir).join(name)).unwrap()))
}

fn leftovers(home: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for dir in [home.join("tmp"), home.join("tmp/downloads")] {
        let Ok(items) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in items.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".lock") && name != "downloads" {
                out.push(name);
            }
        }
    }
    out
}

fn pull(
    server: &FakeHub,
    config: HubConfig,
    home: &Path,
    reference: &str,
) -> Result<locara_daemon::store::ModelEntry, StoreError> {
    let hub = Hub::new(config.clone()).unwrap();
    let reference = HubRef::parse(reference, &config)?;
    let files = hub.list(&reference)?;
    let choice = choose(&reference, &files)?;
    let name = default_name(&reference, &choice)?;
    let _ = server;
    Store::open(home)
        .unwrap()
        .pull_hub(&hub, &reference, &choice, &name, &mut NoProgress)
}

#[test]
fn a_repository_pull_takes_the_default_quant_through_the_redirect_and_checks_it() {
    let Some(smol) = test_model("smollm2-135m.gguf") else {
        return;
    };
    let server = FakeHub::start();
    let readme = Arc::new(b"# SmolLM2 GGUF\n".to_vec());
    let other = Arc::new(b"not the file you asked for".to_vec());
    server.add_repo(
        "test/SmolLM2-135M-Instruct-GGUF",
        false,
        vec![
            ("README.md", readme),
            ("SmolLM2-135M-Instruct-Q8_0.gguf", other),
            ("SmolLM2-135M-Instruct-Q4_K_M.gguf", smol.clone()),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let config = server.config();
    let reference = HubRef::parse("hf.co/test/SmolLM2-135M-Instruct-GGUF", &config).unwrap();
    let hub = Hub::new(config.clone()).unwrap();
    let choice = choose(&reference, &hub.list(&reference).unwrap()).unwrap();
    assert_eq!(choice.quant.as_deref(), Some("Q4_K_M"));
    assert_eq!(choice.reason, "the default");
    // The header, for plan's verdict, comes before the download.
    let header = hub.header(&reference, &choice.files[0]).unwrap();
    assert_eq!(header.model.architecture, "llama");

    let entry = pull(
        &server,
        config,
        home.path(),
        "hf.co/test/SmolLM2-135M-Instruct-GGUF",
    )
    .unwrap();
    assert_eq!(entry.name.as_str(), "smollm2-135m-instruct:q4_k_m");
    assert_eq!(entry.sha256, sha_hex(&smol));
    assert_eq!(entry.source, "hf");
    assert!(entry
        .origin
        .as_deref()
        .unwrap()
        .contains("test/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf"));
    assert_eq!(std::fs::read(&entry.path).unwrap(), *smol);
    let store = Store::open(home.path()).unwrap();
    assert_eq!(store.list().unwrap(), vec![entry]);
    assert!(
        leftovers(home.path()).is_empty(),
        "{:?}",
        leftovers(home.path())
    );
    // Every file request went through `resolve` and its redirect.
    let log = server.log();
    assert!(log.iter().any(|l| l
        .path
        .contains("/resolve/main/SmolLM2-135M-Instruct-Q4_K_M.gguf")));
    assert!(server
        .cdn_log()
        .iter()
        .all(|l| l.host.starts_with("localhost:")));
}

#[test]
fn an_interrupted_download_continues_with_a_range_request() {
    let Some(smol) = test_model("smollm2-135m.gguf") else {
        return;
    };
    let server = FakeHub::start();
    server.add_repo(
        "test/smol-GGUF",
        false,
        vec![("smol-Q4_K_M.gguf", smol.clone())],
    );
    let cut = 10 << 20;
    server.fault(&sha_hex(&smol), &[Fault::CutAfter(cut)]);
    let home = tempfile::tempdir().unwrap();
    let entry = pull(
        &server,
        server.config(),
        home.path(),
        "hf.co/test/smol-GGUF",
    )
    .unwrap();
    assert_eq!(entry.sha256, sha_hex(&smol));
    let ranges: Vec<_> = server.cdn_log().into_iter().map(|l| l.range).collect();
    assert_eq!(ranges, vec![None, Some(format!("bytes={cut}-"))]);
}

#[test]
fn a_pull_given_up_keeps_its_partial_download_and_the_next_pull_continues_it() {
    let Some(smol) = test_model("smollm2-135m.gguf") else {
        return;
    };
    let server = FakeHub::start();
    server.add_repo(
        "test/smol-GGUF",
        false,
        vec![("smol-Q4_K_M.gguf", smol.clone())],
    );
    let sha = sha_hex(&smol);
    let cut = 7 << 20;
    server.fault(&sha, &[Fault::CutAfter(cut), Fault::Status(503)]);
    let home = tempfile::tempdir().unwrap();
    let mut config = server.config();
    config.attempts = 2;
    let err = pull(&server, config.clone(), home.path(), "hf.co/test/smol-GGUF").unwrap_err();
    assert_eq!(err.kind(), "download_failed", "{err}");
    assert!(err.to_string().contains("503"), "{err}");
    // Nothing half-visible: no model, only the partial download.
    let store = Store::open(home.path()).unwrap();
    assert!(store.list().unwrap().is_empty());
    let partial = home.path().join(format!("tmp/downloads/{sha}.part"));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), cut);

    let entry = pull(&server, config, home.path(), "hf.co/test/smol-GGUF").unwrap();
    assert_eq!(entry.sha256, sha);
    let last = server.cdn_log().pop().unwrap();
    assert_eq!(last.range, Some(format!("bytes={cut}-")));
    assert!(!partial.exists());
    assert!(
        leftovers(home.path()).is_empty(),
        "{:?}",
        leftovers(home.path())
    );
}

#[test]
fn a_wrong_checksum_stores_nothing_and_deletes_the_download() {
    let Some(smol) = test_model("smollm2-135m.gguf") else {
        return;
    };
    let server = FakeHub::start();
    server.add_repo("test/smol-GGUF", false, vec![("smol-Q4_K_M.gguf", smol)]);
    let wrong = "0".repeat(64);
    server.publish_sha256("test/smol-GGUF", "smol-Q4_K_M.gguf", &wrong);
    let home = tempfile::tempdir().unwrap();
    let err = pull(
        &server,
        server.config(),
        home.path(),
        "hf.co/test/smol-GGUF",
    )
    .unwrap_err();
    assert_eq!(err.kind(), "checksum_mismatch");
    assert!(err.to_string().contains(&wrong), "{err}");
    assert!(Store::open(home.path()).unwrap().list().unwrap().is_empty());
    assert!(
        leftovers(home.path()).is_empty(),
        "{:?}",
        leftovers(home.path())
    );
}

#[test]
fn a_file_that_fails_the_guard_is_not_stored() {
    let server = FakeHub::start();
    let junk = Arc::new(b"GGUF but not really a model at all".to_vec());
    server.add_repo("test/junk-GGUF", false, vec![("junk-Q4_K_M.gguf", junk)]);
    let home = tempfile::tempdir().unwrap();
    let err = pull(
        &server,
        server.config(),
        home.path(),
        "hf.co/test/junk-GGUF",
    )
    .unwrap_err();
    assert_eq!(err.kind(), "invalid_model", "{err}");
    assert!(Store::open(home.path()).unwrap().list().unwrap().is_empty());
    assert!(
        leftovers(home.path()).is_empty(),
        "{:?}",
        leftovers(home.path())
    );
}

#[test]
fn a_gated_repository_needs_the_token_which_stays_on_the_hub() {
    let Some(gemma) = test_model("gemma3-270m.gguf") else {
        return;
    };
    let server = FakeHub::start();
    server.add_repo(
        "google/gemma-3-270m-GGUF",
        true,
        vec![("gemma-3-270m-Q4_K_M.gguf", gemma.clone())],
    );
    let home = tempfile::tempdir().unwrap();
    let reference = "hf.co/google/gemma-3-270m-GGUF:Q4_K_M";

    let err = pull(&server, server.config(), home.path(), reference).unwrap_err();
    assert_eq!(err.kind(), "hub_token_required", "{err}");
    let text = err.to_string();
    assert!(text.contains("401") && text.contains("HF_TOKEN"), "{text}");

    let mut wrong = server.config();
    wrong.token = Some(HubToken::new("hf_wrong".to_string()));
    let err = pull(&server, wrong, home.path(), reference).unwrap_err();
    assert_eq!(err.kind(), "hub_access_denied", "{err}");
    assert!(!err.to_string().contains("hf_wrong"), "{err}");

    let mut config = server.config();
    config.token = Some(HubToken::new(FAKE_TOKEN.to_string()));
    let entry = pull(&server, config, home.path(), reference).unwrap();
    assert_eq!(entry.sha256, sha_hex(&gemma));
    assert_eq!(entry.architecture, "gemma3");
    // A pasted URL of another host (`localhost` is not the configured
    // 127.0.0.1) never gets the token.
    let mut config = server.config();
    config.token = Some(HubToken::new(FAKE_TOKEN.to_string()));
    let port = server.endpoint().rsplit(':').next().unwrap().to_string();
    let url = format!(
        "http://localhost:{port}/google/gemma-3-270m-GGUF/resolve/main/gemma-3-270m-Q4_K_M.gguf"
    );
    let other_home = tempfile::tempdir().unwrap();
    let err = pull(&server, config, other_home.path(), &url).unwrap_err();
    assert_eq!(err.kind(), "hub_token_withheld", "{err}");
    assert!(err.to_string().contains("HF_ENDPOINT"), "{err}");

    let log = server.log();
    let resolve = log
        .iter()
        .rfind(|l| l.path.contains("/resolve/") && l.authorization.is_some())
        .unwrap();
    assert_eq!(resolve.authorization, Some(format!("Bearer {FAKE_TOKEN}")));
    // The CDN is another host: it never sees the token.
    assert!(server.cdn_log().iter().all(|l| l.authorization.is_none()));
}

#[test]
fn a_missing_repository_or_quantisation_says_which() {
    let server = FakeHub::start();
    server.add_repo(
        "test/tiny-GGUF",
        false,
        vec![("tiny-Q8_0.gguf", Arc::new(GgufBuilder::synthetic().build()))],
    );
    let home = tempfile::tempdir().unwrap();
    let err = pull(
        &server,
        server.config(),
        home.path(),
        "hf.co/test/nothing-here",
    )
    .unwrap_err();
    assert_eq!(err.kind(), "hub_not_found", "{err}");
    assert!(err.to_string().contains("hf.co/test/nothing-here"), "{err}");
    let err = pull(
        &server,
        server.config(),
        home.path(),
        "hf.co/test/tiny-GGUF:Q5_K_M",
    )
    .unwrap_err();
    assert_eq!(err.kind(), "no_matching_file", "{err}");
    assert!(err.to_string().contains("Q8_0"), "{err}");
    // No Q4_K_M: the only file, said so.
    let entry = pull(
        &server,
        server.config(),
        home.path(),
        "hf.co/test/tiny-GGUF",
    )
    .unwrap();
    assert_eq!(entry.name.as_str(), "tiny:q8_0");
}

/// The synthetic model cut in two as `gguf-split` does: the first part has
/// the metadata and three tensors, the second the other two.
fn split_parts() -> (Vec<u8>, Vec<u8>) {
    let whole = GgufBuilder::synthetic();
    let split_keys = |b: GgufBuilder, no: u16| {
        b.kv("split.no", Value::U16(no))
            .kv("split.count", Value::U16(2))
            .kv("split.tensors.count", Value::I32(5))
    };
    let mut first = split_keys(whole.clone(), 0);
    first.tensors.truncate(3);
    let mut second = split_keys(GgufBuilder::new(), 1);
    second.tensors = whole.tensors[3..].to_vec();
    (first.build(), second.build())
}

#[test]
fn a_split_model_is_pulled_and_validated_as_one() {
    let (a, b) = split_parts();
    let server = FakeHub::start();
    server.add_repo(
        "test/split-GGUF",
        false,
        vec![
            ("Q8_0/split-Q8_0-00002-of-00002.gguf", Arc::new(b.clone())),
            ("Q8_0/split-Q8_0-00001-of-00002.gguf", Arc::new(a.clone())),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    // A file URL of the first part means the whole model.
    let url = format!(
        "{}/test/split-GGUF/resolve/main/Q8_0/split-Q8_0-00001-of-00002.gguf",
        server.endpoint()
    );
    let entry = pull(&server, server.config(), home.path(), &url).unwrap();
    assert_eq!(entry.parts.len(), 2);
    assert_eq!(entry.path, entry.parts[0].path);
    assert!(entry.path.ends_with("model-00001-of-00002.gguf"));
    assert_eq!(entry.parts[1].sha256, sha_hex(&b));
    assert_eq!(entry.size, (a.len() + b.len()) as u64);
    let files: Vec<PathBuf> = entry.files().into_iter().map(Path::to_path_buf).collect();
    let whole = validate_parts(&files).unwrap();
    assert_eq!(whole.tensors.len(), 5);
    assert_eq!(std::fs::read(&files[1]).unwrap(), b);

    // An app's install-time fit check counts every part's weights.
    let manifest = locara_daemon::manifest::parse_manifest(
        &format!(
            "id = \"com.example.split\"\nname = \"Split\"\nversion = \"1.0.0\"\n\
             [[models]]\nref = \"{}\"\n",
            entry.name
        ),
        "split.toml",
    )
    .unwrap();
    let store = Store::open(home.path()).unwrap();
    // f16: the synthetic model's heads (16) are narrower than a q8_0 block.
    let defaults = locara_core::LoadDefaults {
        context: 2048,
        kv_type: locara_core::KvType::F16,
    };
    let backend = locara_core::Backend::Gpu;
    let costs = locara_daemon::apps::model_costs(&manifest, &store, &backend, &defaults).unwrap();
    let options = locara_core::estimate::EstimateOptions {
        context: defaults.context,
        kv_type: defaults.kv_type,
        parallel: manifest.max_concurrency,
        backend,
        full_window_cache: locara_core::estimate::ENGINE_FULL_WINDOW_CACHE,
        pool: None,
    };
    let all_parts = locara_core::estimate::estimate(&whole.shape(), &options).unwrap();
    assert_eq!(costs[0].estimate, all_parts.total());
    assert_eq!(all_parts.mapped_weights, whole.model.tensor_data_bytes);
}

#[test]
fn split_parts_out_of_order_fail_the_guard() {
    let (a, b) = split_parts();
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    std::fs::write(&pa, &a).unwrap();
    std::fs::write(&pb, &b).unwrap();
    let err = validate_parts(&[pb.clone(), pa.clone()]).unwrap_err();
    assert_eq!(err.kind(), "invalid_model");
    assert!(err.to_string().contains("split.no"), "{err}");
    assert!(err.to_string().contains("b.gguf"), "{err}");
    let err = validate_parts(&[pa.clone(), pa]).unwrap_err();
    assert!(err.to_string().contains("split.no"), "{err}");
}

#[test]
fn a_pinned_sha256_that_the_hub_contradicts_downloads_nothing() {
    let server = FakeHub::start();
    let tiny = Arc::new(GgufBuilder::synthetic().build());
    server.add_repo(
        "test/tiny-GGUF",
        false,
        vec![("tiny-Q4_K_M.gguf", tiny.clone())],
    );
    let config = server.config();
    let hub = Hub::new(config.clone()).unwrap();
    let url = format!(
        "{}/test/tiny-GGUF/resolve/main/tiny-Q4_K_M.gguf",
        server.endpoint()
    );
    let reference = HubRef::parse(&url, &config).unwrap();
    let mut choice = choose(&reference, &hub.list(&reference).unwrap()).unwrap();
    let err = choice.pin(&reference, &"0".repeat(64)).unwrap_err();
    assert!(err.to_string().contains("the catalog pins"), "{err}");
    assert!(server.cdn_log().is_empty());
    // The right pin passes and the pull checks against it.
    choice.pin(&reference, &sha_hex(&tiny)).unwrap();
    let home = tempfile::tempdir().unwrap();
    let entry = Store::open(home.path())
        .unwrap()
        .pull_hub(
            &hub,
            &reference,
            &choice,
            &"tiny:q4_k_m".parse().unwrap(),
            &mut NoProgress,
        )
        .unwrap();
    assert_eq!(entry.sha256, sha_hex(&tiny));
}
