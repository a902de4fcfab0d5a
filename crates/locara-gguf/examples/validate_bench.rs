//! Times `validate_file` on one model: `cargo run --release -p locara-gguf
//! --example validate_bench -- MODEL.gguf [RUNS]` prints min/median/max in
//! milliseconds over RUNS runs (default 50), after one untimed warm-up run so
//! that the header is in the page cache for every timed run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: validate_bench MODEL.gguf [RUNS]");
        return ExitCode::from(2);
    };
    let runs: usize = match args.next().map(|s| s.parse()) {
        None => 50,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("RUNS must be a positive integer");
            return ExitCode::from(2);
        }
    };

    let file = match locara_gguf::validate_file(&path) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("{}: {err} ({})", path.display(), err.kind());
            return ExitCode::FAILURE;
        }
    };
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let result = locara_gguf::validate_file(&path);
            let elapsed = start.elapsed().as_secs_f64() * 1e3;
            // Keep the work observable so it cannot be optimised away.
            assert!(result.is_ok());
            elapsed
        })
        .collect();
    ms.sort_by(f64::total_cmp);

    let model = &file.model;
    println!(
        "{}: {} bytes, header {} bytes, {} tensors, {} metadata keys ({} {}, {} layers)",
        path.display(),
        file.file_size,
        file.data_offset,
        file.tensors.len(),
        file.metadata.len(),
        model.architecture,
        model.quantization,
        model.block_count
    );
    println!(
        "validate_file over {runs} runs: min {:.2} ms, median {:.2} ms, max {:.2} ms",
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
    ExitCode::SUCCESS
}
