//! Welch's t-test (unequal variances) for comparing two small sets of measurements, e.g. a metric over seeds
//! of two model variants, and the paired t-test for two measurements of the same seeds.

use serde::Serialize;

/// The outcome of [`welch`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TTest {
    /// mean(a) − mean(b) over its standard error.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// Welch's two-sample t-test of mean(a) = mean(b). Needs two values in each sample; with no spread at all the
/// test is degenerate: p = 1 when the means are equal, 0 when they differ.
pub fn welch(a: &[f64], b: &[f64]) -> Option<TTest> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    let (sa, sb) = (va / a.len() as f64, vb / b.len() as f64);
    let se2 = sa + sb;
    if se2 == 0.0 {
        let p = if ma == mb { 1.0 } else { 0.0 };
        return Some(TTest { t: if ma == mb { 0.0 } else { f64::INFINITY }, df: f64::NAN, p });
    }
    let t = (ma - mb) / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (a.len() - 1) as f64 + sb * sb / (b.len() - 1) as f64);
    Some(TTest { t, df, p: two_sided_p(t, df) })
}

/// The paired t-test of mean(a − b) = 0, for two measurements of the same units (seeds, models). Needs two
/// pairs of equal-length inputs; differences with no spread are degenerate as in [`welch`].
pub fn paired(a: &[f64], b: &[f64]) -> Option<TTest> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (mean, var) = mean_var(&differences);
    let df = (a.len() - 1) as f64;
    if var == 0.0 {
        let p = if mean == 0.0 { 1.0 } else { 0.0 };
        return Some(TTest { t: if mean == 0.0 { 0.0 } else { f64::INFINITY }, df, p });
    }
    let t = mean / (var / a.len() as f64).sqrt();
    Some(TTest { t, df, p: two_sided_p(t, df) })
}

fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    (mean, x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0))
}

/// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2).
pub fn two_sided_p(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// The regularised incomplete beta function I_x(a, b), by its continued fraction (evaluated with the modified
/// Lentz method), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where the fraction converges slowly.
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * continued_fraction(a, b, x) / a
    } else {
        1.0 - front * continued_fraction(b, a, 1.0 - x) / b
    }
}

fn continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let clamp = |v: f64| if v.abs() < TINY { TINY.copysign(v) } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0));
    let mut f = d;
    for m in 1..300 {
        let m = m as f64;
        // Even step: d_{2m} = m(b − m)x / ((a + 2m − 1)(a + 2m)); odd step: −(a + m)(a + b + m)x / ((a + 2m)(a + 2m + 1)).
        for numerator in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 / clamp(1.0 + numerator * d);
            c = clamp(1.0 + numerator / c);
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-15 {
            break;
        }
    }
    f
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients: about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = G[1..].iter().enumerate().fold(G[0], |acc, (i, g)| acc + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed forms: df = 1 is Cauchy (P(|T| ≥ 1) = ½), df = 2 has P(|T| ≥ t) = 1 − t / √(t² + 2); the df = 10
    /// value is the familiar 5% critical point 2.228139 (tolerance 1e-6 on p).
    #[test]
    fn student_t_tails_match_closed_forms() {
        assert!((two_sided_p(1.0, 1.0) - 0.5).abs() < 1e-10);
        for t in [0.5, 2.0, 7.0] {
            let expected = 1.0 - t / (t * t + 2.0f64).sqrt();
            assert!((two_sided_p(t, 2.0) - expected).abs() < 1e-10, "t = {t}");
        }
        assert!((two_sided_p(2.228_139, 10.0) - 0.05).abs() < 1e-6);
        assert!((two_sided_p(0.0, 5.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn welch_on_separated_and_overlapping_samples() {
        let far = welch(&[10.0, 10.5, 9.5], &[1.0, 1.5, 0.5]).unwrap();
        assert!(far.p < 1e-3 && far.t > 0.0, "{far:?}");
        let near = welch(&[1.0, 2.0, 3.0], &[1.5, 2.5, 2.0]).unwrap();
        assert!(near.p > 0.5, "{near:?}");
        // Equal variances and sizes: df = 2(n − 1).
        assert!((far.df - 4.0).abs() < 1e-12);
        assert!(welch(&[1.0], &[2.0, 3.0]).is_none());
        assert_eq!(welch(&[1.0, 1.0], &[1.0, 1.0]).unwrap().p, 1.0);
    }

    /// Differences 1, 2, 3 have mean 2 and standard error 1/√3: t = 2√3 on 2 degrees of freedom.
    #[test]
    fn paired_test_of_known_differences() {
        let test = paired(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((test.t - 2.0 * 3f64.sqrt()).abs() < 1e-12 && test.df == 2.0, "{test:?}");
        assert!((test.p - two_sided_p(2.0 * 3f64.sqrt(), 2.0)).abs() < 1e-15);
        assert_eq!(paired(&[1.0, 2.0], &[0.0, 1.0]).unwrap().p, 0.0);
        assert!(paired(&[1.0], &[0.0]).is_none() && paired(&[1.0, 2.0], &[0.0]).is_none());
    }
}
