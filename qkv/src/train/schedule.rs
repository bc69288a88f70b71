//! Learning-rate schedules as pure functions of the step.

/// The paper's schedule, eq. (3): lr = factor · C^−0.5 · min(step^−0.5, step · warmup^−1.5) — linear warm-up
/// for `warmup` steps, then decay with the inverse square root of the step. Steps count from 1.
pub fn inverse_sqrt(step: usize, d_model: usize, warmup: usize, factor: f64) -> f64 {
    let step = step.max(1) as f64;
    let warmup = warmup.max(1) as f64;
    factor * (d_model as f64).powf(-0.5) * step.powf(-0.5).min(step * warmup.powf(-1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_at_warmup_then_decays() {
        let peak = inverse_sqrt(4000, 512, 4000, 1.0);
        assert!((peak - 512f64.powf(-0.5) * 4000f64.powf(-0.5)).abs() < 1e-12);
        assert!(inverse_sqrt(2000, 512, 4000, 1.0) < peak);
        assert!(inverse_sqrt(8000, 512, 4000, 1.0) < peak);
        assert!((inverse_sqrt(1000, 512, 4000, 1.0) * 2.0 - inverse_sqrt(2000, 512, 4000, 1.0)).abs() < 1e-12);
    }
}
