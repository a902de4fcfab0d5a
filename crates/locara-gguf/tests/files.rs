//! `validate_file` on real paths: regular files pass, anything else is
//! refused at once (a FIFO must not block the caller), and the two real test
//! models validate with the values llama.cpp reports for them.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use locara_gguf::testing::GgufBuilder;
use locara_gguf::{validate_file, GgufError, GgufFile};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("locara-gguf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `validate_file` on another thread and fails the test if it has not
/// answered within five seconds: a blocked open must fail, not hang.
fn validate_with_deadline(path: &Path) -> Result<GgufFile, GgufError> {
    let (tx, rx) = mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(validate_file(&owned));
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("validate_file({}) blocked", path.display()))
}

#[test]
fn a_regular_file_validates_with_its_length_as_end() {
    let dir = TempDir::new("regular");
    let path = dir.0.join("synthetic.gguf");
    let bytes = GgufBuilder::synthetic().build();
    std::fs::write(&path, &bytes).unwrap();
    let file = validate_with_deadline(&path).unwrap();
    assert_eq!(file.file_size, bytes.len() as u64);
    assert_eq!(file.model.architecture, "llama");

    // One byte short on disk: the last tensor now ends past the end.
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let err = validate_with_deadline(&path).unwrap_err();
    assert_eq!(err.kind(), "tensor_past_end", "{err}");
}

#[test]
fn a_directory_is_refused() {
    let dir = TempDir::new("directory");
    let err = validate_with_deadline(&dir.0).unwrap_err();
    assert_eq!(err.kind(), "not_regular_file");
    assert!(
        err.to_string()
            .contains("is a directory, not a regular file"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = TempDir::new("fifo");
    let path = dir.0.join("model.gguf");
    // The command rather than libc::mkfifo: no unsafe code in this crate's tests either.
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
    // Opening a FIFO for reading blocks until a writer appears; nobody will.
    let err = validate_with_deadline(&path).unwrap_err();
    assert_eq!(err.kind(), "not_regular_file");
    assert!(err.to_string().contains("is a FIFO"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_device_is_refused() {
    let err = validate_with_deadline(Path::new("/dev/zero")).unwrap_err();
    assert_eq!(err.kind(), "not_regular_file");
    assert!(err.to_string().contains("a character device"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_symlink_to_a_regular_file_is_followed() {
    let dir = TempDir::new("symlink");
    let target = dir.0.join("target.gguf");
    std::fs::write(&target, GgufBuilder::synthetic().build()).unwrap();
    let link = dir.0.join("link.gguf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(validate_with_deadline(&link).is_ok());
}

#[test]
fn a_missing_file_is_an_io_error_naming_the_path() {
    let err = validate_with_deadline(Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert_eq!(err.kind(), "io");
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

/// The directory holding the real test models, or `None` (with the reason
/// printed) when the environment does not provide them.
fn test_models() -> Option<PathBuf> {
    match std::env::var_os("LOCARA_TEST_MODELS") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!(
                "skipped: LOCARA_TEST_MODELS is not set, so the real test models are not available"
            );
            None
        }
    }
}

fn global_layers(file: &GgufFile) -> Vec<usize> {
    let layers = &file.model.sliding_window_layers;
    (0..layers.len()).filter(|&i| !layers[i]).collect()
}

#[test]
fn smollm2_135m_validates_with_llama_cpp_values() {
    let Some(dir) = test_models() else { return };
    let path = dir.join("smollm2-135m.gguf");
    let file = validate_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m = &file.model;
    assert_eq!(m.architecture, "llama");
    assert_eq!(m.block_count, 30);
    assert_eq!(m.embedding_length, 576);
    assert_eq!(m.head_count, 9);
    assert_eq!(m.head_count_kv, vec![3; 30]);
    assert_eq!((m.key_length, m.value_length), (64, 64));
    assert_eq!(m.context_length, 8192);
    assert_eq!(m.vocab_size, 49152);
    assert_eq!(m.sliding_window, None);
    assert!(m.sliding_window_layers.is_empty());
    assert!(m.has_chat_template);
    assert_eq!((m.file_type, m.quantization.as_str()), (Some(3), "Q4_1"));
    assert_eq!(file.tensors.len(), 272);
    assert_eq!(file.file_size, 98_362_432);
    // llama.cpp prints "134.52 M" parameters.
    assert_eq!(m.parameter_count, 134_515_008);
    assert!(m.tensor_data_bytes <= file.file_size - file.data_offset);
    println!("{path:?}: {m:#?}\n{:#?}", file.tensor_summary());
}

/// llama.cpp prints "268.10 M" parameters for Gemma 3 270M.
const GEMMA_PARAMS: u64 = 268_098_176;

#[test]
fn gemma3_270m_validates_with_llama_cpp_values() {
    let Some(dir) = test_models() else { return };
    let path = dir.join("gemma3-270m.gguf");
    let file = validate_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m = &file.model;
    assert_eq!(m.architecture, "gemma3");
    assert_eq!(m.block_count, 18);
    assert_eq!(m.embedding_length, 640);
    assert_eq!(m.head_count, 4);
    assert_eq!(m.head_count_kv, vec![1; 18]);
    assert_eq!((m.key_length, m.value_length), (256, 256));
    assert_eq!(m.context_length, 32768);
    assert_eq!(m.sliding_window, Some(512));
    // No pattern key in the file: llama.cpp's gemma3 default of 6 applies,
    // so every sixth layer is global.
    assert!(file
        .get("gemma3.attention.sliding_window_pattern")
        .is_none());
    assert_eq!(m.sliding_window_pattern, Some(6));
    assert_eq!(global_layers(&file), vec![5, 11, 17]);
    assert_eq!(m.vocab_size, 262_144);
    assert_eq!((m.file_type, m.quantization.as_str()), (Some(15), "Q4_K_M"));
    assert_eq!(file.tensors.len(), 236);
    assert_eq!(file.file_size, 253_113_024);
    assert_eq!(m.parameter_count, GEMMA_PARAMS);
    assert!(m.tensor_data_bytes <= file.file_size - file.data_offset);
    println!("{path:?}: {m:#?}\n{:#?}", file.tensor_summary());
}
