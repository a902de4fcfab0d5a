//! Pure policy for the Locara runtime.
//!
//! This crate holds the vocabulary and the decisions of the runtime and
//! nothing that touches the outside world: no I/O, no threads, no clock reads
//! (time arrives as a value). Everything here can be tested with values in
//! and values out.
//!
//! ```
//! use locara_core::{KvType, LoadDefaults};
//!
//! let d = LoadDefaults::default();
//! assert_eq!(d.kv_type, KvType::Q8_0);
//! // A model trained on 2048 tokens never gets the 8192 default.
//! assert_eq!(d.context_for(None, 2048), 2048);
//! ```

#![forbid(unsafe_code)]

pub mod bytes;
pub mod controller;
pub mod estimate;
pub mod fit;
pub mod governor;
pub mod history;
pub mod ladder;
pub mod load;
pub mod manifest;
pub mod power;
pub mod text;
pub mod threads;

pub use bytes::Bytes;
pub use estimate::{
    estimate, estimate_filled, max_context_fitting, Backend, Estimate, EstimateCheck,
    EstimateError, EstimateOptions, ModelShape,
};
pub use load::{
    KvType, LoadDefaults, ParseKvTypeError, PoolSize, DEFAULT_CONTEXT, DOWNSHIFT_FLOOR,
    LARGEST_CONTEXT, SMALLEST_CONTEXT, STARTING_POOL_CELLS,
};
