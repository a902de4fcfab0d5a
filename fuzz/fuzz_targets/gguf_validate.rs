//! Feeds arbitrary bytes to `validate_bytes`. A panic, an abort (for example
//! an allocation the size a hostile count asks for), a timeout or a broken
//! invariant of an accepted file is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match locara_gguf::validate_bytes(data) {
        Ok(file) => {
            // What the guard promises about every file it accepts.
            assert_eq!(file.file_size, data.len() as u64);
            assert!(file.alignment.is_power_of_two());
            let mut end_of_previous = file.data_offset;
            for tensor in &file.tensors {
                assert!(
                    tensor.offset >= end_of_previous,
                    "tensors overlap or precede the data"
                );
                assert_eq!(tensor.offset % file.alignment, 0, "tensor misaligned");
                let end = tensor
                    .offset
                    .checked_add(tensor.n_bytes)
                    .expect("end overflows");
                assert!(end <= file.file_size, "tensor past end of file");
                assert!(tensor.dims.len() <= locara_gguf::MAX_DIMS as usize);
                assert!(tensor.dims.iter().all(|&d| d > 0));
                end_of_previous = end;
            }
            let summary = file.tensor_summary();
            assert_eq!(summary.count, file.tensors.len());
            assert!(summary.total_bytes <= file.file_size);
            let model = &file.model;
            assert_eq!(model.head_count_kv.len(), model.block_count as usize);
            assert!(model.block_count >= 1 && model.block_count <= locara_gguf::MAX_BLOCK_COUNT);
        }
        Err(err) => {
            // Formatting every message exercises every Display impl.
            assert!(!err.kind().is_empty());
            let _ = err.to_string();
        }
    }
});
