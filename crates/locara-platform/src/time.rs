//! The wall clock as Unix time, for the timestamps that leave the process:
//! files, `ps` and status output, API responses. Durations and deadlines
//! use `Instant`, not these.
//!
//! ```
//! let ms = locara_platform::time::unix_now_ms();
//! let s = locara_platform::time::unix_now_s();
//! assert!(ms / 1000 >= s.saturating_sub(1));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch; 0 if the clock is before 1970.
pub fn unix_now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Now, in seconds since the Unix epoch; 0 if the clock is before 1970.
pub fn unix_now_s() -> u64 {
    since_epoch().as_secs()
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_seconds_read_the_same_clock() {
        let s = unix_now_s();
        let ms = unix_now_ms();
        let s_after = unix_now_s();
        // 2023-11-14: any clock this runs under is past it.
        assert!(s > 1_700_000_000, "{s}");
        assert!((s..=s_after).contains(&(ms / 1000)), "{s} {ms} {s_after}");
    }
}
