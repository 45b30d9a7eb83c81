//! Statistics for multi-seed results: mean ± Student-t CI, bootstrap CIs (percentile and BCa),
//! paired permutation test and Wilcoxon signed-rank test.
//!
//! Conventions follow SciPy (`scipy.stats.t.interval`, `bootstrap`, `permutation_test` with
//! `permutation_type="samples"`, `wilcoxon` with `zero_method="wilcox"`), and the tests check
//! against numbers SciPy 1.17 printed for the same inputs.

use rand::Rng;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

use crate::{Error, Result};

/// A two-sided confidence interval around a point estimate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    /// The point estimate (the statistic on the original sample).
    pub estimate: f64,
    /// Lower end.
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// Confidence level in (0, 1), e.g. 0.95.
    pub level: f64,
}

impl Interval {
    /// Half the width, `(high − low) / 2`.
    pub fn half_width(&self) -> f64 {
        0.5 * (self.high - self.low)
    }

    /// `mean ± half-width` with `digits` significant digits, e.g. `1.23 ± 0.04`.
    pub fn display(&self, digits: usize) -> String {
        format!(
            "{} ± {}",
            crate::format::fmt_sig(self.estimate, digits),
            crate::format::fmt_sig(self.half_width(), 2)
        )
    }
}

/// The result of a two-sided hypothesis test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    /// The test statistic (mean difference for the permutation test; `min(W⁺, W⁻)` for
    /// Wilcoxon).
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Whether the p-value is exact (full enumeration / exact null distribution).
    pub exact: bool,
}

fn check_sample(xs: &[f64], min_len: usize, what: &str) -> Result<()> {
    if xs.len() < min_len {
        return Err(Error::Invalid(format!(
            "{what}: need at least {min_len} values, got {}",
            xs.len()
        )));
    }
    if let Some(i) = xs.iter().position(|x| !x.is_finite()) {
        return Err(Error::Invalid(format!(
            "{what}: value {i} is not finite ({})",
            xs[i]
        )));
    }
    Ok(())
}

fn check_level(level: f64) -> Result<()> {
    if level > 0.0 && level < 1.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "confidence level must be in (0, 1), got {level}"
        )))
    }
}

fn check_paired(a: &[f64], b: &[f64]) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::Invalid(format!(
            "paired samples differ in length: {} vs {}",
            a.len(),
            b.len()
        )));
    }
    Ok(())
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn standard_normal() -> Normal {
    // Parameters (0, 1) are valid, so construction cannot fail.
    Normal::new(0.0, 1.0).unwrap_or_else(|_| unreachable!("N(0, 1) is a valid normal"))
}

/// Mean with a Student-t confidence interval (`n ≥ 2`).
pub fn mean_ci(xs: &[f64], level: f64) -> Result<Interval> {
    check_sample(xs, 2, "mean CI")?;
    check_level(level)?;
    let n = xs.len() as f64;
    let m = mean(xs);
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    let t = StudentsT::new(0.0, 1.0, n - 1.0).map_err(|e| Error::Invalid(e.to_string()))?;
    let half = t.inverse_cdf(0.5 + level / 2.0) * (var / n).sqrt();
    Ok(Interval {
        estimate: m,
        low: m - half,
        high: m + half,
        level,
    })
}

/// Wilson score interval of a proportion `successes / n` (`n ≥ 1`): unlike a bootstrap or a
/// normal interval it does not collapse to a point at 0 or `n` successes (32 of 32 at 95%:
/// [0.893, 1]).
pub fn wilson_ci(successes: usize, n: usize, level: f64) -> Result<Interval> {
    check_level(level)?;
    if n == 0 || successes > n {
        return Err(Error::Invalid(format!(
            "Wilson interval: need 0 ≤ successes ≤ n and n ≥ 1, got {successes} of {n}"
        )));
    }
    let z = standard_normal().inverse_cdf(0.5 + level / 2.0);
    let nf = n as f64;
    let p = successes as f64 / nf;
    let d = 1.0 + z * z / nf;
    let centre = (p + z * z / (2.0 * nf)) / d;
    let half = z / d * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt();
    Ok(Interval {
        estimate: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
        level,
    })
}

/// How a bootstrap interval is formed from the resampled statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapMethod {
    /// Percentiles of the bootstrap distribution.
    Percentile,
    /// Bias-corrected and accelerated (Efron 1987; acceleration from the jackknife).
    Bca,
}

/// Linear-interpolation quantile (NumPy's default) of sorted values.
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Bootstrap confidence interval of `statistic` over `xs` with `resamples` resamples drawn from
/// `rng` (deterministic for a seeded generator).
pub fn bootstrap_ci(
    xs: &[f64],
    statistic: impl Fn(&[f64]) -> f64,
    level: f64,
    resamples: usize,
    method: BootstrapMethod,
    rng: &mut impl Rng,
) -> Result<Interval> {
    check_sample(xs, 2, "bootstrap")?;
    check_level(level)?;
    if resamples < 100 {
        return Err(Error::Invalid(format!(
            "bootstrap needs at least 100 resamples, got {resamples}"
        )));
    }
    let n = xs.len();
    let estimate = statistic(xs);
    let mut buf = vec![0.0; n];
    let mut reps: Vec<f64> = (0..resamples)
        .map(|_| {
            for v in buf.iter_mut() {
                *v = xs[rng.random_range(0..n)];
            }
            statistic(&buf)
        })
        .collect();
    reps.sort_by(f64::total_cmp);
    let alpha = 1.0 - level;
    let (q_low, q_high) = match method {
        BootstrapMethod::Percentile => (alpha / 2.0, 1.0 - alpha / 2.0),
        BootstrapMethod::Bca => {
            let normal = standard_normal();
            // Bias correction: the share of replicates below the estimate (ties count half).
            let below = reps.iter().filter(|&&r| r < estimate).count() as f64;
            let at_or_below = reps.iter().filter(|&&r| r <= estimate).count() as f64;
            let z0 = normal.inverse_cdf((below + at_or_below) / (2.0 * resamples as f64));
            // Acceleration from the jackknife.
            let jack: Vec<f64> = (0..n)
                .map(|i| {
                    let rest: Vec<f64> = xs
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, &x)| x)
                        .collect();
                    statistic(&rest)
                })
                .collect();
            let jm = mean(&jack);
            let num: f64 = jack.iter().map(|j| (jm - j).powi(3)).sum();
            let den: f64 = jack.iter().map(|j| (jm - j).powi(2)).sum::<f64>().powf(1.5);
            let a = if den > 0.0 { num / (6.0 * den) } else { 0.0 };
            let adjust = |z: f64| normal.cdf(z0 + (z0 + z) / (1.0 - a * (z0 + z)));
            (
                adjust(normal.inverse_cdf(alpha / 2.0)),
                adjust(normal.inverse_cdf(1.0 - alpha / 2.0)),
            )
        }
    };
    if !(q_low.is_finite() && q_high.is_finite()) {
        return Err(Error::Invalid(
            "BCa interval is undefined (degenerate bootstrap distribution)".into(),
        ));
    }
    Ok(Interval {
        estimate,
        low: quantile_sorted(&reps, q_low),
        high: quantile_sorted(&reps, q_high),
        level,
    })
}

/// Largest sample for which the permutation test enumerates all `2^n` sign flips.
pub const EXACT_PERMUTATION_MAX_N: usize = 20;

/// Paired permutation (sign-flip) test of mean(a − b) = 0, two-sided. Exact for
/// `n ≤ EXACT_PERMUTATION_MAX_N`, else `resamples` random sign flips with p = (k + 1)/(R + 1).
pub fn paired_permutation_test(
    a: &[f64],
    b: &[f64],
    resamples: usize,
    rng: &mut impl Rng,
) -> Result<TestResult> {
    check_paired(a, b)?;
    check_sample(a, 1, "permutation test")?;
    check_sample(b, 1, "permutation test")?;
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len();
    let observed = mean(&d);
    // Relative tolerance so that sign patterns giving the same mean up to rounding count as ties.
    let threshold = observed.abs() * (1.0 - 1e-12);
    let extreme = |signs: &mut dyn FnMut(usize) -> bool| {
        let s: f64 = d
            .iter()
            .enumerate()
            .map(|(i, &x)| if signs(i) { -x } else { x })
            .sum();
        (s / n as f64).abs() >= threshold
    };
    if n <= EXACT_PERMUTATION_MAX_N {
        let total = 1u64 << n;
        let count = (0..total)
            .filter(|&mask| extreme(&mut |i| mask >> i & 1 == 1))
            .count();
        return Ok(TestResult {
            statistic: observed,
            p_value: count as f64 / total as f64,
            exact: true,
        });
    }
    if resamples == 0 {
        return Err(Error::Invalid(format!(
            "n = {n} > {EXACT_PERMUTATION_MAX_N} needs resamples > 0"
        )));
    }
    let count = (0..resamples)
        .filter(|_| extreme(&mut |_| rng.random::<bool>()))
        .count();
    Ok(TestResult {
        statistic: observed,
        p_value: (count as f64 + 1.0) / (resamples as f64 + 1.0),
        exact: false,
    })
}

/// Average ranks (1-based) of `values`, ties sharing their mean rank; also returns the tie
/// group sizes.
pub(crate) fn average_ranks(values: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut ties = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &k in &order[start..end] {
            ranks[k] = rank;
        }
        if end - start > 1 {
            ties.push(end - start);
        }
        start = end;
    }
    (ranks, ties)
}

/// Largest number of non-zero differences for which Wilcoxon uses the exact null distribution.
pub const EXACT_WILCOXON_MAX_N: usize = 50;

/// Wilcoxon signed-rank test of the paired differences `a − b`, two-sided. Zero differences are
/// dropped (`zero_method="wilcox"`). Exact null distribution when `n ≤ 50` and there are no
/// ties or zeros; otherwise the normal approximation with the tie correction of the variance
/// (no continuity correction).
pub fn wilcoxon_signed_rank(a: &[f64], b: &[f64]) -> Result<TestResult> {
    check_paired(a, b)?;
    check_sample(a, 1, "Wilcoxon")?;
    check_sample(b, 1, "Wilcoxon")?;
    let all: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let d: Vec<f64> = all.iter().copied().filter(|&x| x != 0.0).collect();
    let n = d.len();
    if n == 0 {
        return Err(Error::Invalid(
            "Wilcoxon: every paired difference is zero".into(),
        ));
    }
    let (ranks, ties) = average_ranks(&d.iter().map(|x| x.abs()).collect::<Vec<_>>());
    let w_plus: f64 = d
        .iter()
        .zip(&ranks)
        .filter(|(x, _)| **x > 0.0)
        .map(|(_, r)| r)
        .sum();
    let total = (n * (n + 1)) as f64 / 2.0;
    let statistic = w_plus.min(total - w_plus);
    if n <= EXACT_WILCOXON_MAX_N && ties.is_empty() && d.len() == all.len() {
        // counts[s] = number of subsets of {1..n} with rank sum s.
        let max = n * (n + 1) / 2;
        let mut counts = vec![0u128; max + 1];
        counts[0] = 1;
        for k in 1..=n {
            for s in (k..=max).rev() {
                counts[s] += counts[s - k];
            }
        }
        let below: u128 = counts[..=statistic as usize].iter().sum();
        let p = (2.0 * below as f64 / 2f64.powi(n as i32)).min(1.0);
        return Ok(TestResult {
            statistic,
            p_value: p,
            exact: true,
        });
    }
    let nf = n as f64;
    let tie_term: f64 = ties
        .iter()
        .map(|&t| (t as f64).powi(3) - t as f64)
        .sum::<f64>()
        / 48.0;
    let sd = (nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - tie_term).sqrt();
    let z = (statistic - total / 2.0) / sd;
    let p = (2.0 * standard_normal().cdf(-z.abs())).min(1.0);
    Ok(TestResult {
        statistic,
        p_value: p,
        exact: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::seeded;

    const A: [f64; 12] = [
        1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30, 2.21, 0.79, 1.44,
    ];
    #[allow(clippy::approx_constant)] // 3.14 is a data value here, not π
    const B: [f64; 12] = [
        0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29, 1.70, 0.91, 1.16,
    ];

    #[test]
    fn student_t_interval_matches_scipy() {
        let ci = mean_ci(&[2.1, 3.4, 1.9, 5.6, 4.2, 3.3, 2.8], 0.95).unwrap();
        assert!((ci.estimate - 3.3285714285714287).abs() < 1e-12);
        assert!((ci.low - 2.149360717356341).abs() < 1e-9, "{ci:?}");
        assert!((ci.high - 4.507782139786516).abs() < 1e-9, "{ci:?}");
    }

    #[test]
    fn wilson_interval_matches_the_formula_and_rejects_bad_counts() {
        for (k, n, low, high) in [
            (8, 10, 0.4901624715366418, 0.9433178485456248),
            (32, 32, 0.8928208017449293, 1.0),
            (0, 5, 0.0, 0.43448246478317476),
        ] {
            let ci = wilson_ci(k, n, 0.95).unwrap();
            assert_eq!(ci.estimate, k as f64 / n as f64);
            assert!(
                (ci.low - low).abs() < 1e-9 && (ci.high - high).abs() < 1e-9,
                "{ci:?}"
            );
        }
        assert!(wilson_ci(3, 2, 0.95).is_err());
        assert!(wilson_ci(0, 0, 0.95).is_err());
    }

    #[test]
    fn wilcoxon_exact_and_approximate_match_scipy() {
        let exact = wilcoxon_signed_rank(&A, &B).unwrap();
        assert!(exact.exact);
        assert_eq!(exact.statistic, 9.0);
        assert!((exact.p_value - 0.01611328125).abs() < 1e-12, "{exact:?}");
        // With a zero and ties SciPy falls back to the normal approximation, as we do.
        let c = [1.0, 2.0, 2.0, 3.0, 0.0, 4.0, 4.0, 5.0, -1.0, 6.0, 3.0, 2.0];
        let approx = wilcoxon_signed_rank(&c, &[0.0; 12]).unwrap();
        assert!(!approx.exact);
        assert_eq!(approx.statistic, 1.5);
        assert!(
            (approx.p_value - 0.004947560496579222).abs() < 1e-9,
            "{approx:?}"
        );
    }

    #[test]
    fn exact_permutation_test_matches_scipy() {
        let r = paired_permutation_test(&A, &B, 0, &mut seeded(0)).unwrap();
        assert!(r.exact);
        assert!((r.p_value - 0.00830078125).abs() < 1e-12, "{r:?}");
        // Identical samples: every flip is as extreme, p = 1.
        assert_eq!(
            paired_permutation_test(&A, &A, 0, &mut seeded(0))
                .unwrap()
                .p_value,
            1.0
        );
    }

    #[test]
    fn monte_carlo_permutation_agrees_with_enumeration_just_past_the_exact_limit() {
        let n = EXACT_PERMUTATION_MAX_N + 1;
        let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin() + 0.25).collect();
        let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.91).cos()).collect();
        let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let observed = mean(&d).abs() * (1.0 - 1e-12);
        let hits = (0u64..1 << n)
            .filter(|mask| {
                let s: f64 = d
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| if mask >> i & 1 == 1 { -x } else { x })
                    .sum();
                (s / n as f64).abs() >= observed
            })
            .count();
        let exact = hits as f64 / (1u64 << n) as f64;
        let r = paired_permutation_test(&a, &b, 40_000, &mut seeded(1)).unwrap();
        assert!(!r.exact);
        let se = (exact * (1.0 - exact) / 40_000.0).sqrt();
        assert!(
            (r.p_value - exact).abs() < 4.0 * se + 1e-4,
            "Monte Carlo {} vs exact {exact}",
            r.p_value
        );
        assert_eq!(
            r,
            paired_permutation_test(&a, &b, 40_000, &mut seeded(1)).unwrap(),
            "deterministic under a seed"
        );
    }

    const SKEWED: [f64; 25] = [
        1.133976, 0.876249, 1.897283, 1.1106, 0.585277, 1.435617, 3.684003, 2.578173, 0.494734,
        0.28212, 0.536186, 1.042192, 0.09778, 0.803489, 0.287679, 0.480818, 0.580272, 0.728841,
        1.509277, 2.836337, 0.879383, 3.921458, 0.514173, 1.421212, 2.468153,
    ];

    #[test]
    fn bootstrap_intervals_agree_with_scipy_within_monte_carlo_error() {
        // SciPy, 200 000 resamples: percentile (0.9110, 1.7117), BCa (0.9480, 1.7723).
        let p = bootstrap_ci(
            &SKEWED,
            mean,
            0.95,
            50_000,
            BootstrapMethod::Percentile,
            &mut seeded(3),
        )
        .unwrap();
        let b = bootstrap_ci(
            &SKEWED,
            mean,
            0.95,
            50_000,
            BootstrapMethod::Bca,
            &mut seeded(3),
        )
        .unwrap();
        for (got, want) in [
            (p.low, 0.910985617),
            (p.high, 1.711711473),
            (b.low, 0.9480237864),
            (b.high, 1.772311409),
        ] {
            assert!((got - want).abs() < 0.01, "{got} vs SciPy {want}");
        }
        // On right-skewed data BCa shifts the interval up relative to the percentile interval.
        assert!(b.low > p.low && b.high > p.high);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_problem() {
        assert!(mean_ci(&[1.0], 0.95)
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
        assert!(mean_ci(&[1.0, 2.0], 1.5)
            .unwrap_err()
            .to_string()
            .contains("(0, 1)"));
        assert!(mean_ci(&[1.0, f64::NAN], 0.9)
            .unwrap_err()
            .to_string()
            .contains("not finite"));
        assert!(wilcoxon_signed_rank(&[1.0, 2.0], &[1.0])
            .unwrap_err()
            .to_string()
            .contains("length"));
        assert!(wilcoxon_signed_rank(&[1.0, 2.0], &[1.0, 2.0])
            .unwrap_err()
            .to_string()
            .contains("zero"));
        let e = bootstrap_ci(
            &[1.0, 2.0, 3.0],
            mean,
            0.95,
            10,
            BootstrapMethod::Bca,
            &mut seeded(0),
        )
        .unwrap_err();
        assert!(e.to_string().contains("resamples"));
    }
}
