//! The worker's share of the cores: how many threads its decodes use and at
//! what CPU priority (the daemon decides both, `locara_core::threads`).
//!
//! llama.cpp is built without OpenMP (the workspace leaves llama-cpp-2's
//! `openmp` feature off), so ggml computes graphs on its own thread pool.
//! Left to itself, ggml makes a pool for each graph and joins it at its
//! end; starting threads for every token cost about 5 % of SmolLM2's decode
//! speed against llama-bench, which keeps one pool. So each worker keeps a
//! pool of exactly its share of the cores ([`decode`] attaches it,
//! `llama_attach_threadpool`, and makes it again when the share changes),
//! whose threads poll for the next graph as llama.cpp's do ([`POLL`]) and
//! then sleep on a condition variable: a worker between answers stops
//! spinning a fraction of a second after its last graph, and a worker
//! whose share is one core has no pool thread at all. Inside a graph ggml's barriers still
//! spin, which is why the daemon's thread budget keeps workers' shares
//! within the cores.
//!
//! ggml's threads inherit the scheduling policy, nice value (Linux) or QoS
//! class (macOS) of the thread that makes them. So background work has a
//! pool of its own, made on a lowered thread, and its decodes run on a
//! thread made for them, which lowers itself first: on Linux an
//! unprivileged thread can never raise its priority back (a nice value
//! once raised), and the main thread must stay at full priority for the
//! interactive work that follows.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::DecodeError;
use locara_core::threads::ThreadClass;
use std::sync::Mutex;

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
    threads: i32,
) -> Result<(), DecodeError> {
    if class == ThreadClass::Interactive {
        attach(ctx, &INTERACTIVE, threads);
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
                // Made (once) on this lowered thread: its threads inherit
                // the lower class.
                attach(ctx, &BACKGROUND, threads);
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

/// A ggml thread pool of `threads` threads (the calling thread counts as
/// one of them).
struct Pool {
    raw: *mut llama_cpp_sys_2::ggml_threadpool,
    threads: i32,
}

// SAFETY: a ggml thread pool is made to be driven from any thread (ggml
// hands it graphs under its own lock); the worker decodes on one thread at
// a time, and a pool is freed only when no context uses it (see `attach`).
unsafe impl Send for Pool {}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: made by `ggml_threadpool_new`, freed once; no context
        // computes on it any more (`attach` moved the worker's context to
        // its successor first).
        unsafe { llama_cpp_sys_2::ggml_threadpool_free(self.raw) };
    }
}

/// The pool of interactive decodes, made at normal priority.
static INTERACTIVE: Mutex<Option<Pool>> = Mutex::new(None);
/// The pool of background decodes, made on a lowered thread.
static BACKGROUND: Mutex<Option<Pool>> = Mutex::new(None);

/// How long a pool's threads poll for the next graph before they sleep,
/// in ggml's units (0: sleep at once): llama.cpp's default, as llama-server
/// and llama-bench run, so the comparison with them is like for like. On 2
/// cores, 0, 1 and 50 differed by less than the run-to-run noise in decode
/// speed (0.956, 0.970, 0.988 of llama-bench over 3 reps) and in chat
/// turns' first tokens (`locara-serve-bench --only chat8`: 1.05–1.11x
/// llama-server at 1; 0.96–0.99x, then 1.04–1.08x, at 50). The polling ends
/// a fraction of a second after the last graph, and a worker whose share
/// is one core has no pool thread to poll.
const POLL: u32 = 50;

/// A pool of `threads` threads, polling [`POLL`] between graphs; `None`
/// when ggml cannot make one (decodes then make their own).
fn new_pool(threads: i32) -> Option<Pool> {
    // SAFETY: plain constructors of ggml's CPU backend; the params are a
    // value filled by ggml itself, then given the poll.
    let raw = unsafe {
        let mut params = llama_cpp_sys_2::ggml_threadpool_params_default(threads);
        params.poll = POLL;
        llama_cpp_sys_2::ggml_threadpool_new(&mut params)
    };
    (!raw.is_null()).then_some(Pool { raw, threads })
}

/// Makes `ctx` compute on the pool in `slot`, of exactly `threads` threads
/// (the worker's share of the cores, so no thread of it waits unused): made
/// on first use, and made again when the share changes, the old pool freed
/// once this context is on the new one. The worker's other such context (a
/// draft model's, `drafter.rs`) may still name the freed pool, but ggml
/// reads a context's pool only while it computes a graph, and every decode
/// comes through here first and attaches the pool in force. A context
/// whose address cannot be reached keeps ggml's pool per graph: slower,
/// never wrong.
fn attach(ctx: &mut LlamaContext<'_>, slot: &Mutex<Option<Pool>>, threads: i32) {
    let Ok(raw_ctx) = context_address(ctx) else {
        return;
    };
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot.as_ref().is_none_or(|p| p.threads != threads) {
        let Some(pool) = new_pool(threads.max(1)) else {
            return;
        };
        // SAFETY: `raw_ctx` is the live context this `&mut` borrow owns
        // (checked in `context_address`) and no decode runs on it
        // meanwhile; the pool lives in `slot` until a successor replaces
        // it here, after this same attach moved the context away.
        unsafe { llama_cpp_sys_2::llama_attach_threadpool(raw_ctx, pool.raw, pool.raw) };
        *slot = Some(pool);
        return;
    }
    if let Some(pool) = slot.as_ref() {
        // SAFETY: as above.
        unsafe { llama_cpp_sys_2::llama_attach_threadpool(raw_ctx, pool.raw, pool.raw) };
    }
}
