//! Medians, spreads and the Locara / llama-bench ratios: plain functions of
//! the samples, so they are tested without running anything.

use serde::Serialize;

/// The samples of one side of one metric, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Tokens per second, middle sample (mean of the two middle ones for an
    /// even count).
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Every sample in the order it was taken, tokens per second.
    pub samples: Vec<f64>,
}

impl Summary {
    /// `None` for no samples, or for a sample that is not a finite number
    /// (a failed measurement must not turn into a plausible median).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            samples: samples.to_vec(),
        })
    }
}

/// One metric (prefill or decode) on both sides, and how they compare.
///
/// The samples come in pairs: sample `i` of each side was taken back to back
/// with the other's. The ratio that counts is the median of the pairs'
/// ratios: a pair sees the same machine, so a slow minute moves both of its
/// members and cancels out of their ratio, where it would move the two
/// sides' medians apart if one side happened to draw more slow minutes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub llama_bench: Summary,
    pub locara: Summary,
    /// Locara / llama-bench of each pair, summarised; above 1 means Locara
    /// is faster.
    pub pairs: Summary,
    /// The median of the pairs' ratios: the figure checked against `target`.
    pub ratio: f64,
    /// Median of Locara over median of llama-bench, for comparison.
    pub ratio_of_medians: f64,
    /// The ratio this metric must reach.
    pub target: f64,
    pub pass: bool,
}

impl Comparison {
    /// `None` unless both sides have the same number of samples, at least
    /// one, all finite, with every llama-bench sample above zero.
    pub fn new(llama_bench: &[f64], locara: &[f64], target: f64) -> Option<Comparison> {
        if llama_bench.len() != locara.len() || llama_bench.iter().any(|&s| s <= 0.0) {
            return None;
        }
        let ratios: Vec<f64> = llama_bench.iter().zip(locara).map(|(l, o)| o / l).collect();
        let pairs = Summary::of(&ratios)?;
        let llama_bench = Summary::of(llama_bench)?;
        let locara = Summary::of(locara)?;
        Some(Comparison {
            pass: pairs.median >= target,
            ratio: pairs.median,
            ratio_of_medians: locara.median / llama_bench.median,
            llama_bench,
            locara,
            pairs,
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(s.samples, vec![5.0, 1.0, 3.0], "samples keep their order");
        assert_eq!(Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(Summary::of(&[7.0]).unwrap().median, 7.0);
    }

    #[test]
    fn median_ignores_one_outlier() {
        // A background job slowing one rep to a crawl leaves the median alone.
        let s = Summary::of(&[100.0, 101.0, 20.0, 99.0, 100.5]).unwrap();
        assert_eq!(s.median, 100.0);
        assert_eq!(s.min, 20.0);
    }

    #[test]
    fn no_summary_of_nothing_or_of_nan() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
        assert!(Summary::of(&[f64::INFINITY]).is_none());
    }

    #[test]
    fn ratio_is_locara_over_llama_bench_and_checked_against_target() {
        let c = Comparison::new(&[200.0, 210.0, 190.0], &[196.0, 205.8, 186.2], 0.97).unwrap();
        assert!((c.ratio - 0.98).abs() < 1e-12);
        assert!(c.pass);
        let c = Comparison::new(&[200.0], &[189.0], 0.95).unwrap();
        assert!(!c.pass, "0.945 is below 0.95");
        assert!(
            Comparison::new(&[200.0], &[190.0], 0.95).unwrap().pass,
            "the target itself passes"
        );
    }

    #[test]
    fn pairs_cancel_a_drift_that_medians_do_not() {
        // The machine slows down in the third pair, between its two runs,
        // and stays slow: Locara drew three slow runs, llama-bench two. Within
        // every other pair Locara is 2 % slower.
        let llama = [100.0, 100.0, 100.0, 60.0, 60.0];
        let locara = [98.0, 98.0, 58.8, 58.8, 58.8];
        let c = Comparison::new(&llama, &locara, 0.97).unwrap();
        assert!((c.ratio - 0.98).abs() < 1e-12, "{c:?}");
        assert!((c.ratio_of_medians - 0.588).abs() < 1e-12, "{c:?}");
        assert!((c.pairs.min - 0.588).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn no_ratio_against_a_zero_baseline_or_unpaired_samples() {
        assert!(Comparison::new(&[0.0], &[10.0], 0.95).is_none());
        assert!(Comparison::new(&[], &[], 0.95).is_none());
        assert!(Comparison::new(&[10.0, 11.0], &[10.0], 0.95).is_none());
        assert!(Comparison::new(&[10.0], &[f64::NAN], 0.95).is_none());
    }
}
