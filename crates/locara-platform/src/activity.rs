//! Keeping the machine awake while a model loads or generates.

use crate::os;

/// While alive, macOS does not idle-sleep: it holds an
/// `NSProcessInfo.beginActivityWithOptions:reason:` activity with the options
/// user-initiated and idle-system-sleep-disabled, ended on drop. A laptop that
/// dozes off mid-generation stalls the answer and the app that waits for it.
///
/// Elsewhere it is a no-op: Linux has no per-process equivalent short of a
/// logind inhibitor lock over D-Bus, and a runtime that serves local apps
/// should not need a system bus to work.
///
/// ```
/// let guard = locara_platform::ActivityGuard::begin("loading SmolLM2-135M");
/// // ... load the model ...
/// drop(guard);
/// ```
#[must_use = "the activity ends when the guard is dropped"]
pub struct ActivityGuard {
    _activity: os::Activity,
    held: bool,
}

impl ActivityGuard {
    /// Begins an activity; `reason` is shown by the OS (e.g. in `pmset -g
    /// assertions`).
    pub fn begin(reason: &str) -> ActivityGuard {
        let activity = os::Activity::begin(reason);
        ActivityGuard {
            held: activity.is_held(),
            _activity: activity,
        }
    }

    /// Whether the OS holds an activity for this guard (false where the guard
    /// is a no-op).
    pub fn is_held(&self) -> bool {
        self.held
    }
}

impl std::fmt::Debug for ActivityGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityGuard")
            .field("held", &self.held)
            .finish()
    }
}
