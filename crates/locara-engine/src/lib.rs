//! The Locara engine worker: llama.cpp in a process of its own.
//!
//! llama.cpp aborts its process on some bad inputs even in release builds,
//! so it never runs inside the daemon. Each loaded model lives in one worker
//! process (`locara engine`, spawned by the daemon or `locara run`); ending
//! the worker gives every page back to the OS.
//!
//! * [`protocol`]: the versioned, length-prefixed messages between parent
//!   and worker;
//! * [`client`]: the parent's side ([`Worker`]);
//! * [`pool`]: the K/V pool's decisions (which sequence a request reuses,
//!   what a context shift drops, what a resize keeps), as plain functions;
//! * [`disk`]: the disk tier's files (format, checks, index, room);
//! * [`draft`]: speculative decoding's choices (prompt lookup, the draft
//!   length);
//! * `worker` (feature `llama`): the worker itself, over `llama-cpp-2`;
//!   `cpu` its threads per decode and their CPU priority.
//!
//! ```no_run
//! use locara_engine::client::{Worker, WorkerCommand};
//! use locara_engine::protocol::*;
//!
//! let worker = Worker::spawn(&WorkerCommand::current_exe()?)?;
//! // One sequence, the whole pool up front (no `PoolFull` to answer), no
//! // cache tiers, no draft model.
//! let info = worker.load(LoadRequest::new("model.gguf".into(), 4))?;
//! worker.send(&Request::Generate(GenerateRequest {
//!     id: 1,
//!     prompt: Prompt::Raw { text: "Once upon a time".into() },
//!     sampling: Sampling::greedy(), max_tokens: Some(16), stop: vec![],
//!     n_keep: None, truncate: true, cache_prompt: true, speculative: true,
//! }))?;
//! loop {
//!     match worker.recv()? {
//!         Event::Token { text, .. } => print!("{text}"),
//!         Event::Done { .. } => break,
//!         other => eprintln!("{other:?}"),
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod client;
#[cfg(feature = "llama")]
mod cpu;
pub mod disk;
pub mod draft;
#[cfg(feature = "llama")]
mod drafter;
#[cfg(feature = "llama")]
pub mod embed;
pub mod grammar;
pub mod pool;
pub mod protocol;
pub mod stop;
#[cfg(feature = "llama")]
pub mod worker;

pub use client::{EngineError, Worker, WorkerCommand};
