//! A stream of pressure level changes, fed by a thread of its own (the OS
//! watchers) or by hand (the simulated source).

use crate::{time::unix_now_ms, LevelChange, PressureLevel};
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// A change of the pressure level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PressureEvent {
    /// The level from now on.
    pub level: PressureLevel,
    /// The level before.
    pub previous: PressureLevel,
    /// When the change was seen, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The signal behind the change, for people and logs.
    pub reason: String,
}

impl PressureEvent {
    /// The event for a change a [`crate::LevelDeriver`] saw just now.
    pub(crate) fn seen_now(change: LevelChange) -> PressureEvent {
        PressureEvent {
            level: change.to,
            previous: change.from,
            at_unix_ms: unix_now_ms(),
            reason: change.reason,
        }
    }
}

/// The source of a [`PressureWatch`] has ended (its thread stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pressure source has ended")]
pub struct WatchEnded;

/// Level changes as they happen. Dropping the watch stops its thread and
/// waits for it.
///
/// The stream is a plain channel so that it suits any runtime: an async
/// daemon reads it from a blocking task.
pub struct PressureWatch {
    initial: PressureLevel,
    events: Receiver<PressureEvent>,
    method: String,
    /// Tells the thread to stop; run once, on drop.
    stop: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<JoinHandle<()>>,
}

impl PressureWatch {
    /// A watch over `events`; `stop` ends the thread that feeds them and
    /// `thread` is joined on drop.
    pub(crate) fn new(
        initial: PressureLevel,
        events: Receiver<PressureEvent>,
        method: String,
        stop: Option<Box<dyn FnOnce() + Send>>,
        thread: Option<JoinHandle<()>>,
    ) -> Self {
        PressureWatch {
            initial,
            events,
            method,
            stop,
            thread,
        }
    }

    /// The level when the watch started; events report changes from it.
    pub fn initial_level(&self) -> PressureLevel {
        self.initial
    }

    /// How this watch learns about pressure, for people (e.g. "PSI trigger
    /// `some 150000 1000000` on /proc/pressure/memory, MemAvailable every 1 s").
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Waits for the next change; `None` once the source has ended.
    pub fn recv(&self) -> Option<PressureEvent> {
        self.events.recv().ok()
    }

    /// Waits up to `timeout` for the next change; `Ok(None)` on timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<PressureEvent>, WatchEnded> {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(WatchEnded),
        }
    }

    /// The next change if one is waiting.
    pub fn try_recv(&self) -> Option<PressureEvent> {
        self.events.try_recv().ok()
    }
}

impl Drop for PressureWatch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the watcher thread has already been printed; there
            // is nothing more to do with it while dropping.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for PressureWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PressureWatch")
            .field("initial", &self.initial)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}
