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

/// A Unix time in UTC, split for printing (no time-zone database needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millisecond: u32,
}

/// `unix_ms` (milliseconds since the Unix epoch) as a UTC date and time.
pub fn utc(unix_ms: u64) -> UtcTime {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    UtcTime {
        year: yoe + era * 400 + i64::from(month <= 2),
        month: month as u32,
        day: day as u32,
        hour: (rem / 3600) as u32,
        minute: (rem % 3600 / 60) as u32,
        second: (rem % 60) as u32,
        millisecond: (unix_ms % 1000) as u32,
    }
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
    fn unix_times_split_into_utc_dates() {
        let t = utc(1_738_332_309_123);
        assert_eq!(
            (
                t.year,
                t.month,
                t.day,
                t.hour,
                t.minute,
                t.second,
                t.millisecond
            ),
            (2025, 1, 31, 14, 5, 9, 123)
        );
        let leap = utc(951_782_400_000); // 2000-02-29T00:00:00Z
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        assert_eq!(utc(0).year, 1970);
    }

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
