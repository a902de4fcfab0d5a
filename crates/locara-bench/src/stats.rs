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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub llama_bench: Summary,
    pub locara: Summary,
    /// Median of Locara over median of llama-bench; above 1 means Locara is
    /// faster.
    pub ratio: f64,
    /// The ratio this metric must reach.
    pub target: f64,
    pub pass: bool,
}

impl Comparison {
    pub fn new(llama_bench: &[f64], locara: &[f64], target: f64) -> Option<Comparison> {
        let llama_bench = Summary::of(llama_bench)?;
        let locara = Summary::of(locara)?;
        if llama_bench.median <= 0.0 {
            return None;
        }
        let ratio = locara.median / llama_bench.median;
        Some(Comparison {
            pass: ratio >= target,
            llama_bench,
            locara,
            ratio,
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
        let c = Comparison::new(&[200.0, 210.0, 190.0], &[196.0, 194.0, 198.0], 0.97).unwrap();
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
    fn no_ratio_against_a_zero_baseline() {
        assert!(Comparison::new(&[0.0], &[10.0], 0.95).is_none());
        assert!(Comparison::new(&[], &[10.0], 0.95).is_none());
    }
}
