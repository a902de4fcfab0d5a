//! Writes the synthetic test models into a directory, e.g. to seed the fuzzer:
//! `cargo run -p locara-gguf --features testing --example write_synthetic -- fuzz/seeds/gguf_validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use locara_gguf::testing::GgufBuilder;
use locara_gguf::{GgmlType, Value};

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: write_synthetic DIR");
        return ExitCode::from(2);
    };
    let files = [
        // Every value type, a nested array, five tensors of different types.
        ("synthetic.gguf", GgufBuilder::synthetic()),
        // Metadata only: small, so mutations reach the model checks quickly.
        ("minimal.gguf", GgufBuilder::minimal_model("gemma3")),
        // One tiny tensor, version 2, a sliding window: reaches the layout checks.
        (
            "one_tensor_v2.gguf",
            GgufBuilder {
                version: 2,
                ..GgufBuilder::minimal_model("gemma3")
                    .kv("gemma3.attention.sliding_window", Value::U32(512))
                    .tensor("output_norm.weight", &[8], GgmlType::F32)
            },
        ),
    ];
    if let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {err}", dir.display());
        return ExitCode::FAILURE;
    }
    for (name, builder) in files {
        let path = dir.join(name);
        let bytes = builder.build();
        if let Err(err) = locara_gguf::validate_bytes(&bytes) {
            eprintln!("{name} does not validate: {err}");
            return ExitCode::FAILURE;
        }
        if let Err(err) = std::fs::write(&path, &bytes) {
            eprintln!("cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {} bytes to {}", bytes.len(), path.display());
    }
    ExitCode::SUCCESS
}
