//! The Locara daemon's parts: the model store and catalog (and, as they
//! land, the governor and the API).
//!
//! ```no_run
//! use locara_daemon::store::{Catalog, ModelName, Store};
//!
//! let store = Store::open("/tmp/locara-home".as_ref())?;
//! let name: ModelName = "smollm2:135m".parse()?;
//! if store.get(&name)?.is_none() {
//!     let entry = Catalog::builtin()?.find(&name).expect("in the catalog").clone();
//!     store.pull(&entry, &mut locara_daemon::store::NoProgress)?;
//! }
//! # Ok::<(), locara_daemon::store::StoreError>(())
//! ```

#![forbid(unsafe_code)]

pub mod apps;
pub mod config;
pub mod history;
pub mod host;
pub mod manifest;
pub mod metrics;
pub mod ollama;
pub mod openai;
pub mod runtime;
pub mod server;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod web;
