//! The worker's share of the cores: how many threads its decodes use and at
//! what CPU priority (the daemon decides both, `locara_core::threads`).
//!
//! llama.cpp is built without OpenMP (the workspace leaves llama-cpp-2's
//! `openmp` feature off), so ggml computes each graph on a thread pool it
//! makes for that graph and joins at its end: between decodes a worker has
//! no compute thread at all, spinning or sleeping, and a thread count set
//! with `llama_set_n_threads` holds from the next decode on.
//!
//! ggml's threads are started by the thread that decodes and inherit its
//! scheduling policy, nice value (Linux) or QoS class (macOS). So a decode
//! at a lower class runs on a thread made for it, which lowers itself
//! first: on Linux an unprivileged thread can never raise its priority back
//! (a nice value once raised), and the main
//! thread must stay at full priority for the interactive work that follows.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::DecodeError;
use locara_core::threads::ThreadClass;

/// Why the thread count could not be set.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach llama.cpp's context to set its threads: {0:?} does not show its address")]
pub(crate) struct NoContextAddress(String);

/// Sets the threads of `ctx`'s next decodes, single-token and batched
/// alike (`llama_set_n_threads`).
pub(crate) fn set_threads(
    ctx: &mut LlamaContext<'_>,
    threads: i32,
) -> Result<(), NoContextAddress> {
    let raw = context_address(ctx)?;
    // SAFETY: `raw` is the `llama_context *` this `LlamaContext` owns (see
    // `context_address`), alive for the borrow; `&mut` means no decode runs
    // on it meanwhile, and `llama_set_n_threads` only stores the two counts
    // in the context's parameters, read at the next graph computation.
    unsafe { llama_cpp_sys_2::llama_set_n_threads(raw, threads, threads) };
    Ok(())
}

/// The `llama_context *` inside a `LlamaContext`. llama-cpp-2 0.1.160
/// keeps it private and has no `set_n_threads`; its `Debug` prints it
/// (`LlamaContext { context: 0x55d0c8a0b6f0 }`: the `NonNull`'s address).
/// The crate is pinned with `=` in the workspace, and the address is
/// checked against the context before use, so a changed format is an error,
/// not a wild pointer.
fn context_address(
    ctx: &LlamaContext<'_>,
) -> Result<*mut llama_cpp_sys_2::llama_context, NoContextAddress> {
    let shown = format!("{ctx:?}");
    let address = shown
        .strip_prefix("LlamaContext { context: 0x")
        .and_then(|rest| rest.strip_suffix(" }"))
        .and_then(|hex| usize::from_str_radix(hex, 16).ok())
        .filter(|&a| a != 0)
        .ok_or_else(|| NoContextAddress(shown.clone()))?;
    let raw = address as *mut llama_cpp_sys_2::llama_context;
    // SAFETY: `raw` is the address the wrapper itself prints for the
    // context it owns (the format matched exactly above); reading its size
    // is a plain getter, and it must agree with the wrapper's own answer.
    let cells = unsafe { llama_cpp_sys_2::llama_n_ctx(raw) };
    if cells != ctx.n_ctx() {
        return Err(NoContextAddress(shown));
    }
    Ok(raw)
}

/// Decodes `batch` with ggml's threads at `class`: on this thread for
/// interactive work; on a thread made for this decode, lowered first, for
/// background work (its ggml threads inherit the lower priority, and this
/// thread keeps its own).
pub(crate) fn decode(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'_>,
    class: ThreadClass,
) -> Result<(), DecodeError> {
    if class == ThreadClass::Interactive {
        return ctx.decode(batch);
    }
    let decoded = std::thread::scope(|s| {
        let lowered = std::thread::Builder::new()
            .name(format!("decode-{class}"))
            .spawn_scoped(s, || {
                if let Err(e) = locara_platform::set_thread_class(class) {
                    // The decode still runs, at the priority it has.
                    eprintln!("locara engine: {e}");
                }
                ctx.decode(batch)
            });
        lowered.ok().map(|handle| {
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    });
    // No thread to be had: decode here, at this thread's priority.
    decoded.unwrap_or_else(|| ctx.decode(batch))
}
