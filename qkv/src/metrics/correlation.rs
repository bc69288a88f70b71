//! Correlation between predicted and gold scores, as STS benchmarks report them (SciPy's `spearmanr` and
//! `pearsonr`).

use crate::{Error, Result};

/// Pearson's r of two equally long series. Fails on fewer than two points or a constant series (r undefined).
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    check(x, y)?;
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return Err(Error::config("correlation", "a constant series", "values that vary"));
    }
    Ok(sxy / (sxx * syy).sqrt())
}

/// Spearman's ρ: Pearson's r of the ranks, tied values sharing the average of their ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    check(x, y)?;
    pearson(&ranks(x), &ranks(y))
}

/// 1-based ranks, ties given their average rank (SciPy's `rankdata(method="average")`).
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let average = (start + 1 + end) as f64 / 2.0; // mean of ranks start+1 ..= end
        for &i in &order[start..end] {
            ranks[i] = average;
        }
        start = end;
    }
    ranks
}

fn check(x: &[f64], y: &[f64]) -> Result<()> {
    if x.len() != y.len() {
        return Err(Error::config("correlation", format!("{} and {} values", x.len(), y.len()), "equal lengths"));
    }
    if x.len() < 2 {
        return Err(Error::config("correlation", format!("{} points", x.len()), "at least 2"));
    }
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(Error::config("correlation", "a NaN or infinite value", "finite numbers"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_share_average_ranks() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0, 20.0]), vec![1.5, 3.5, 1.5, 5.0, 3.5]);
    }

    #[test]
    fn values_agree_with_scipy() {
        // scipy.stats: spearmanr([1,2,3,4,5],[5,6,7,8,7]) = 0.8207826816681233,
        //              pearsonr(...)                        = 0.8320502943378436
        let (x, y) = ([1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 6.0, 7.0, 8.0, 7.0]);
        assert!((spearman(&x, &y).unwrap() - 0.8207826816681233).abs() < 1e-12);
        assert!((pearson(&x, &y).unwrap() - 0.8320502943378436).abs() < 1e-12);
        assert!((spearman(&x, &[9.0, 7.0, 5.0, 3.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
    }

    #[test]
    fn degenerate_inputs_are_errors() {
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_err());
        assert!(spearman(&[1.0], &[1.0]).is_err());
        assert!(spearman(&[1.0, 2.0], &[1.0]).is_err());
        assert!(pearson(&[1.0, f64::NAN], &[1.0, 2.0]).is_err());
    }
}
