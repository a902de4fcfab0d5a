//! Adopting models from an Ollama-layout and an LM Studio-layout directory
//! built from the real test models (`LOCARA_TEST_MODELS`; hard links where
//! the file system allows, else copies) and from synthetic GGUF files.

use locara_daemon::store::adopt::{scan_lmstudio, scan_ollama, Held, Tool};
use locara_daemon::store::{NoProgress, Store};
use locara_gguf::testing::GgufBuilder;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The real test model `name`, resolved through its symlink, or `None`
/// (saying why) where the environment does not provide them.
fn test_model(name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("LOCARA_TEST_MODELS") else {
        eprintln!(
            "skipped: LOCARA_TEST_MODELS is not set, so the real test models are not available"
        );
        return None;
    };
    Some(fs::canonicalize(Path::new(&dir).join(name)).unwrap())
}

/// Puts `src` at `dest` without copying where possible.
fn place(src: &Path, dest: &Path) {
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    if fs::hard_link(src, dest).is_err() {
        fs::copy(src, dest).unwrap();
    }
}

fn sha_of(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

/// An Ollama models directory with `models` (name, tag, file) in the
/// library namespace, as `ollama pull` leaves them.
fn ollama_dir(root: &Path, models: &[(&str, &str, &Path)]) -> PathBuf {
    let dir = root.join("ollama/models");
    for (name, tag, file) in models {
        let sha = sha_of(file);
        place(file, &dir.join(format!("blobs/sha256-{sha}")));
        let template = dir.join("blobs/sha256-".to_string() + &"1".repeat(64));
        fs::write(&template, "{{ .Prompt }}").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": format!("sha256:{}", "2".repeat(64)), "size": 10},
            "layers": [
                {"mediaType": "application/vnd.ollama.image.template",
                 "digest": format!("sha256:{}", "1".repeat(64)), "size": 13},
                {"mediaType": "application/vnd.ollama.image.model",
                 "digest": format!("sha256:{sha}"), "size": fs::metadata(file).unwrap().len()},
            ],
        });
        let path = dir.join(format!("manifests/registry.ollama.ai/library/{name}/{tag}"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    }
    dir
}

#[test]
fn ollama_models_are_adopted_by_hard_link_and_removing_them_keeps_ollamas_file() {
    let (Some(smol), Some(gemma)) = (
        test_model("smollm2-135m.gguf"),
        test_model("gemma3-270m.gguf"),
    ) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let dir = ollama_dir(
        root.path(),
        &[("smollm2", "135m", &smol), ("gemma3", "270m", &gemma)],
    );
    let found = scan_ollama(&dir, None).unwrap();
    let labels: Vec<_> = found.iter().map(|f| f.label.as_str()).collect();
    assert_eq!(labels, ["gemma3:270m", "smollm2:135m"]);
    let only = scan_ollama(&dir, Some("smollm2")).unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(scan_ollama(&dir, Some("smollm2:7b")).unwrap().len(), 0);

    let home = root.path().join("locara");
    let store = Store::open(&home).unwrap();
    let smol_found = &only[0];
    assert_eq!(smol_found.name.as_str(), "smollm2:135m");
    let entry = store
        .adopt(smol_found, &smol_found.name, false, &mut NoProgress)
        .unwrap();
    let blob = &smol_found.files[0];
    let adopted = entry.adopted.as_ref().unwrap();
    assert_eq!(adopted.tool, Tool::Ollama);
    assert_eq!(adopted.label, "smollm2:135m");
    assert_eq!(entry.sha256, sha_of(&smol));
    assert_eq!(entry.source, "ollama");
    assert_eq!(entry.architecture, "llama");
    // Same file system: a hard link, the same inode, no copy.
    assert_eq!(adopted.held, Held::HardLink);
    assert!(entry.path.starts_with(&home));
    assert_eq!(
        fs::metadata(&entry.path).unwrap().ino(),
        fs::metadata(blob).unwrap().ino()
    );
    assert_eq!(store.list().unwrap(), vec![entry.clone()]);
    let header = store.check_for_load(&entry).unwrap();
    assert_eq!(header.model.architecture, "llama");

    // Adopting the same name again is refused, not duplicated.
    let err = store
        .adopt(smol_found, &smol_found.name, false, &mut NoProgress)
        .unwrap_err();
    assert_eq!(err.kind(), "model_exists");

    store.remove(&entry.name).unwrap();
    assert!(blob.exists(), "Ollama's blob must survive locara rm");
    assert_eq!(sha_of(blob), sha_of(&smol));
}

#[test]
fn a_reference_is_checked_before_each_load() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model.gguf");
    fs::write(&model, GgufBuilder::synthetic().build()).unwrap();
    let dir = ollama_dir(root.path(), &[("tiny", "latest", &model)]);
    let found = scan_ollama(&dir, Some("tiny:latest")).unwrap().remove(0);
    let store = Store::open(&root.path().join("locara")).unwrap();
    let entry = store
        .adopt(&found, &found.name, true, &mut NoProgress)
        .unwrap();
    let adopted = entry.adopted.clone().unwrap();
    assert_eq!(adopted.held, Held::Reference);
    let blob = fs::canonicalize(&found.files[0]).unwrap();
    assert_eq!(entry.path, blob, "a reference loads the tool's own file");
    store.check_for_load(&entry).unwrap();

    // Touched but the same bytes: hashed again, passes, and remembered.
    let bytes = fs::read(&blob).unwrap();
    fs::remove_file(&blob).unwrap();
    fs::write(&blob, &bytes).unwrap();
    store.check_for_load(&entry).unwrap();
    let again = store.get(&entry.name).unwrap().unwrap();
    assert_ne!(again.adopted, entry.adopted, "the new stamp is recorded");
    store.check_for_load(&again).unwrap();

    // Same length, other bytes: refused, naming the file.
    let mut changed = bytes.clone();
    *changed.last_mut().unwrap() ^= 0xff;
    fs::write(&blob, &changed).unwrap();
    let err = store.check_for_load(&again).unwrap_err();
    assert_eq!(err.kind(), "adopted_file_changed");
    assert!(
        err.to_string().contains(&blob.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("sha256"), "{err}");

    // Gone: refused, and removing the model is still possible.
    fs::remove_file(&blob).unwrap();
    let err = store.check_for_load(&again).unwrap_err();
    assert_eq!(err.kind(), "adopted_file_changed");
    store.remove(&entry.name).unwrap();
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_blob_that_is_not_its_digest_or_not_a_model_is_not_adopted() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model.gguf");
    fs::write(&model, GgufBuilder::synthetic().build()).unwrap();
    let dir = ollama_dir(root.path(), &[("tiny", "latest", &model)]);
    let found = scan_ollama(&dir, None).unwrap().remove(0);
    let store = Store::open(&root.path().join("locara")).unwrap();

    // The blob's bytes no longer match the digest that names it.
    let blob = found.files[0].clone();
    let mut bytes = fs::read(&blob).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::remove_file(&blob).unwrap();
    fs::write(&blob, &bytes).unwrap();
    let err = store
        .adopt(&found, &found.name, false, &mut NoProgress)
        .unwrap_err();
    assert_eq!(err.kind(), "checksum_mismatch", "{err}");

    fs::write(&blob, b"GGUF and then nothing useful").unwrap();
    let err = store
        .adopt(&found, &found.name, false, &mut NoProgress)
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_model", "{err}");
    assert!(store.list().unwrap().is_empty());
    let staging: Vec<_> = fs::read_dir(root.path().join("locara/tmp"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(staging.is_empty());
}

#[test]
fn lm_studio_models_are_found_by_publisher_and_repository() {
    let Some(smol) = test_model("smollm2-135m.gguf") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("lmstudio/models");
    let repo = dir.join("bartowski/SmolLM2-135M-Instruct-GGUF");
    place(&smol, &repo.join("SmolLM2-135M-Instruct-Q4_K_M.gguf"));
    fs::write(repo.join("mmproj-SmolLM2-f16.gguf"), b"projector").unwrap();
    fs::write(repo.join("README.md"), b"readme").unwrap();
    let tiny = dir.join("someone/tiny-GGUF/tiny.gguf");
    fs::create_dir_all(tiny.parent().unwrap()).unwrap();
    fs::write(&tiny, GgufBuilder::synthetic().build()).unwrap();

    let all = scan_lmstudio(&dir, None).unwrap();
    let names: Vec<_> = all.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["smollm2-135m-instruct:q4_k_m", "tiny:tiny"]);
    let found = scan_lmstudio(&dir, Some("bartowski/smollm2-135m-instruct-gguf")).unwrap();
    assert_eq!(found.len(), 1);
    let found = &found[0];
    assert_eq!(
        found.label,
        "bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf"
    );

    let store = Store::open(&root.path().join("locara")).unwrap();
    let entry = store
        .adopt(found, &found.name, false, &mut NoProgress)
        .unwrap();
    assert_eq!(entry.source, "lmstudio");
    assert_eq!(entry.sha256, sha_of(&smol));
    assert_eq!(entry.adopted.as_ref().unwrap().held, Held::HardLink);
    store.check_for_load(&entry).unwrap();
    store.remove(&entry.name).unwrap();
    assert!(repo.join("SmolLM2-135M-Instruct-Q4_K_M.gguf").exists());

    let err = scan_lmstudio(&root.path().join("nowhere"), None).unwrap_err();
    assert_eq!(err.kind(), "no_models_dir");
}
