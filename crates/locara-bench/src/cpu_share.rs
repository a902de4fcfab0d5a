//! The figures of the CPU-sharing benchmark (`locara-cpu-bench`): decode
//! speeds of streams that ran at the same time, over the time they all
//! decoded, and the ratios against each stream alone. Plain functions of
//! token arrival times, tested without running anything.

use std::time::{Duration, Instant};

/// Fewest tokens each stream must have in the shared window for its rate
/// to count: below this one token's jitter moves the rate by over 6 %.
pub const MIN_TOKENS_IN_WINDOW: usize = 16;

/// Decode speeds over the time every stream was decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlap {
    /// From the latest first token to the earliest last token.
    pub window: Duration,
    /// Tokens per second of each stream within the window, in the order
    /// given.
    pub rates: Vec<f64>,
}

/// Each stream's tokens per second over the window in which all of them
/// were decoding: from the latest first token to the earliest last token.
/// A token counts for the window when it arrived after its start and by
/// its end. `None` when there is no such window or a stream has fewer than
/// [`MIN_TOKENS_IN_WINDOW`] tokens in it (one stream ended too soon to say
/// anything about running beside the other).
pub fn overlap(streams: &[&[Instant]]) -> Option<Overlap> {
    let start = streams.iter().map(|t| t.first().copied()).max()??;
    let end = streams.iter().map(|t| t.last().copied()).min()??;
    let window = end.checked_duration_since(start)?;
    if window.is_zero() {
        return None;
    }
    let mut rates = Vec::with_capacity(streams.len());
    for times in streams {
        let n = times.iter().filter(|&&t| t > start && t <= end).count();
        if n < MIN_TOKENS_IN_WINDOW {
            return None;
        }
        rates.push(n as f64 / window.as_secs_f64());
    }
    Some(Overlap { window, rates })
}

/// Tokens per second of a stream within `start..=end` (its tokens after
/// `start` and by `end`); `None` for an empty span.
pub fn rate_within(times: &[Instant], start: Instant, end: Instant) -> Option<f64> {
    let span = end.checked_duration_since(start).filter(|d| !d.is_zero())?;
    let n = times.iter().filter(|&&t| t > start && t <= end).count();
    Some(n as f64 / span.as_secs_f64())
}

/// Two models decoding at once against each alone: their aggregate speed
/// over the mean of their speeds alone (the measure: 1.0 means the
/// pair together does as much as one of them alone on average, which fair
/// sharing of the cores gives; spinning threads fighting over the cores
/// measured 0.58).
pub fn aggregate_over_mean_alone(alone: [f64; 2], together: [f64; 2]) -> Option<f64> {
    let mean = (alone[0] + alone[1]) / 2.0;
    (mean > 0.0).then(|| (together[0] + together[1]) / mean)
}

/// An interactive stream's speed beside background work over its speed
/// alone.
pub fn kept(alone: f64, beside: f64) -> Option<f64> {
    (alone > 0.0).then_some(beside / alone)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token times: `n` tokens every `every_ms`, the first at `start_ms`.
    fn times(t0: Instant, start_ms: u64, every_ms: u64, n: u64) -> Vec<Instant> {
        (0..n)
            .map(|i| t0 + Duration::from_millis(start_ms + i * every_ms))
            .collect()
    }

    #[test]
    fn rates_are_taken_over_the_time_both_decoded() {
        let t0 = Instant::now();
        // 100 tok/s from 0 to 1990 ms; 50 tok/s from 500 ms to 2480 ms.
        let a = times(t0, 0, 10, 200);
        let b = times(t0, 500, 20, 100);
        let o = overlap(&[&a, &b]).unwrap();
        assert_eq!(o.window, Duration::from_millis(1490));
        // a: tokens at 510..=1990 (149); b: 520..=1980 (74).
        assert!((o.rates[0] - 149.0 / 1.49).abs() < 1e-9, "{o:?}");
        assert!((o.rates[1] - 74.0 / 1.49).abs() < 1e-9, "{o:?}");
    }

    #[test]
    fn no_rates_without_a_shared_window_worth_measuring() {
        let t0 = Instant::now();
        let a = times(t0, 0, 10, 100);
        // Starts after `a` ended.
        assert_eq!(overlap(&[&a, &times(t0, 2000, 10, 100)]), None);
        // Shares only a few tokens' time.
        assert_eq!(overlap(&[&a, &times(t0, 900, 10, 100)]), None);
        assert_eq!(overlap(&[&a, &[]]), None);
        assert_eq!(overlap(&[]), None);
    }

    #[test]
    fn a_rate_within_a_span() {
        let t0 = Instant::now();
        let b = times(t0, 0, 20, 100);
        let r = rate_within(
            &b,
            t0 + Duration::from_millis(500),
            t0 + Duration::from_millis(1500),
        );
        assert!((r.unwrap() - 50.0).abs() < 1e-9);
        // A paused stream: nothing in the span.
        assert_eq!(
            rate_within(&b, t0 + Duration::from_secs(5), t0 + Duration::from_secs(6)),
            Some(0.0)
        );
        assert_eq!(rate_within(&b, t0, t0), None);
    }

    #[test]
    fn the_ratios() {
        // The measurement: 21.5 and 17.9 together, 90 and 45 alone.
        let r = aggregate_over_mean_alone([90.0, 45.0], [21.5, 17.9]).unwrap();
        assert!((r - 0.5837).abs() < 1e-3, "{r}");
        assert_eq!(aggregate_over_mean_alone([0.0, 0.0], [1.0, 1.0]), None);
        assert_eq!(kept(80.0, 72.0), Some(0.9));
        assert_eq!(kept(0.0, 1.0), None);
    }
}
