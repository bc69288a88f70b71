//! Scores of predicted class labels against gold ones, as scikit-learn computes them (GLUE reports accuracy,
//! F1 and — for CoLA — the Matthews correlation).

use crate::{Error, Result};

/// Fraction of predictions equal to the gold label.
pub fn accuracy(predicted: &[usize], gold: &[usize]) -> Result<f64> {
    check(predicted, gold)?;
    let correct = predicted.iter().zip(gold).filter(|(p, g)| p == g).count();
    Ok(correct as f64 / gold.len() as f64)
}

/// F1 of class 1 with two classes (scikit-learn's `average="binary"`), the unweighted mean of the per-class
/// F1 otherwise (`average="macro"`). A class never predicted nor present scores 0, as scikit-learn does.
pub fn f1(predicted: &[usize], gold: &[usize], classes: usize) -> Result<f64> {
    check(predicted, gold)?;
    let f1_of = |class: usize| {
        let tp = predicted.iter().zip(gold).filter(|&(&p, &g)| p == class && g == class).count() as f64;
        let predicted_count = predicted.iter().filter(|&&p| p == class).count() as f64;
        let gold_count = gold.iter().filter(|&&g| g == class).count() as f64;
        if predicted_count + gold_count == 0.0 {
            0.0
        } else {
            2.0 * tp / (predicted_count + gold_count)
        }
    };
    if classes == 2 {
        return Ok(f1_of(1));
    }
    Ok((0..classes).map(f1_of).sum::<f64>() / classes.max(1) as f64)
}

/// Matthews correlation coefficient in its multi-class form (Gorodkin, 2004; scikit-learn's
/// `matthews_corrcoef`): (c·s − Σ p_k·t_k) / √((s² − Σ p_k²)(s² − Σ t_k²)), 0 when undefined.
pub fn matthews_correlation(predicted: &[usize], gold: &[usize], classes: usize) -> Result<f64> {
    check(predicted, gold)?;
    let s = gold.len() as f64;
    let c = predicted.iter().zip(gold).filter(|(p, g)| p == g).count() as f64;
    let count = |labels: &[usize], k: usize| labels.iter().filter(|&&l| l == k).count() as f64;
    let (mut pt, mut pp, mut tt) = (0.0, 0.0, 0.0);
    for k in 0..classes {
        let (p, t) = (count(predicted, k), count(gold, k));
        pt += p * t;
        pp += p * p;
        tt += t * t;
    }
    let denominator = ((s * s - pp) * (s * s - tt)).sqrt();
    Ok(if denominator == 0.0 { 0.0 } else { (c * s - pt) / denominator })
}

fn check(predicted: &[usize], gold: &[usize]) -> Result<()> {
    if predicted.len() != gold.len() || gold.is_empty() {
        let found = format!("{} predictions for {} gold labels", predicted.len(), gold.len());
        return Err(Error::config("classification scores", found, "one prediction per gold label, at least one"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_agree_with_scikit_learn() {
        // sklearn: matthews_corrcoef([1,1,1,0,0,1,0,1], [1,0,1,0,1,1,0,0]) = 0.2581988897471611,
        //          f1_score(...) = 0.6666666666666666, accuracy 0.625 (gold second).
        let gold = [1, 0, 1, 0, 1, 1, 0, 0];
        let predicted = [1, 1, 1, 0, 0, 1, 0, 1];
        assert!((matthews_correlation(&predicted, &gold, 2).unwrap() - 0.2581988897471611).abs() < 1e-12);
        assert!((f1(&predicted, &gold, 2).unwrap() - 0.6666666666666666).abs() < 1e-12);
        assert_eq!(accuracy(&predicted, &gold).unwrap(), 0.625);
        // Constant predictions: MCC undefined → 0.
        assert_eq!(matthews_correlation(&[1, 1, 1], &[0, 1, 1], 2).unwrap(), 0.0);
        // Three classes: sklearn matthews_corrcoef([0,1,2,2,1],[0,1,2,1,1]) = 0.7349684152591671,
        // f1_score(average="macro") = 0.8222222222222223.
        assert!(
            (matthews_correlation(&[0, 1, 2, 2, 1], &[0, 1, 2, 1, 1], 3).unwrap() - 0.7349684152591671).abs() < 1e-12
        );
        assert!((f1(&[0, 1, 2, 2, 1], &[0, 1, 2, 1, 1], 3).unwrap() - 0.8222222222222223).abs() < 1e-12);
    }
}
