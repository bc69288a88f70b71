//! Learning-rate schedules as pure functions of the step.

/// The paper's schedule, eq. (3): lr = factor · C^−0.5 · min(step^−0.5, step · warmup^−1.5) — linear warm-up
/// for `warmup` steps, then decay with the inverse square root of the step. Steps count from 1.
pub fn inverse_sqrt(step: usize, d_model: usize, warmup: usize, factor: f64) -> f64 {
    let step = step.max(1) as f64;
    let warmup = warmup.max(1) as f64;
    factor * (d_model as f64).powf(-0.5) * step.powf(-0.5).min(step * warmup.powf(-1.5))
}

/// `lr` of update `step` (counting from 1) faded linearly to zero over the last `decay` updates before `total`:
/// × 1 until update total − decay, then × (total + 1 − step) / decay, so the last update takes lr / decay. This is
/// the decay phase of Hu et al.'s (2024) warmup-stable-decay schedule (transformers' `num_decay_steps`): a run
/// stopped by a budget ends annealed, as a cosine schedule over that budget would, while the schedule before the
/// decay stays what it was. `decay` = 0 leaves `lr` as it is.
pub fn linear_cooldown(lr: f64, step: usize, total: usize, decay: usize) -> f64 {
    let start = total.saturating_sub(decay);
    if decay == 0 || step <= start {
        return lr;
    }
    lr * (total + 1).saturating_sub(step) as f64 / decay as f64
}

/// The multiplier at time `elapsed` of a linear fade to 0 over the last `decay` of `total` (any one unit): 1
/// before total − decay, then the share of the fade left, 0 from `total` on. [`linear_cooldown`] over time
/// instead of steps.
pub fn linear_fade(elapsed: f64, total: f64, decay: f64) -> f64 {
    if decay <= 0.0 {
        return 1.0;
    }
    ((total - elapsed) / decay).clamp(0.0, 1.0)
}

/// Hugging Face's `get_linear_schedule_with_warmup`: the learning rate of update `step` (counting from 1)
/// rises linearly from 0 over `warmup` updates, then falls linearly to 0 at update `total` + 1. Like the
/// Trainer, update k uses the multiplier of scheduler step k − 1, so with warm-up the first update has lr 0.
pub fn linear_warmup_decay(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    let current = step.saturating_sub(1) as f64;
    if current < warmup as f64 {
        return peak * current / warmup.max(1) as f64;
    }
    let remaining = (total as f64 - current).max(0.0);
    peak * remaining / (total.saturating_sub(warmup)).max(1) as f64
}

/// nanoGPT's schedule (`get_lr` in its train.py): linear warm-up over `warmup` updates, cosine decay from
/// `peak` to `min` by update `decay_steps`, then `min`. Steps count from 1 (nanoGPT's iteration + 1).
pub fn warmup_cosine(step: usize, warmup: usize, decay_steps: usize, peak: f64, min: f64) -> f64 {
    let it = step.saturating_sub(1);
    if it < warmup {
        return peak * (it + 1) as f64 / (warmup + 1) as f64;
    }
    if it > decay_steps {
        return min;
    }
    let ratio = (it - warmup) as f64 / (decay_steps.saturating_sub(warmup)).max(1) as f64;
    min + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (peak - min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_fades_the_last_updates_to_zero() {
        // total 10, decay 4: updates 1-6 unchanged, then 4/4, 3/4, 2/4, 1/4 of lr; past the end 0.
        let lrs: Vec<f64> = (1..=11).map(|k| linear_cooldown(2.0, k, 10, 4)).collect();
        assert_eq!(lrs, vec![2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.5, 1.0, 0.5, 0.0]);
        assert_eq!(linear_cooldown(2.0, 9, 10, 0), 2.0, "no decay steps: unchanged");
        assert_eq!(linear_cooldown(2.0, 1, 10, 10), 2.0, "a decay as long as the run starts at full lr");
    }

    #[test]
    fn time_fade_falls_linearly_over_the_last_minutes() {
        // 60 minutes, the last 15 fading: full until minute 45, half at 52.5, zero at 60 and after.
        let at = |minute: f64| linear_fade(minute * 60.0, 3600.0, 900.0);
        assert_eq!([at(0.0), at(45.0), at(52.5), at(60.0), at(70.0)], [1.0, 1.0, 0.5, 0.0, 0.0]);
        assert_eq!(linear_fade(10.0, 20.0, 0.0), 1.0, "no fade: unchanged");
    }

    #[test]
    fn linear_schedule_matches_transformers() {
        // get_linear_schedule_with_warmup(warmup=2, total=6): multipliers 0, .5, 1, .75, .5, .25 for updates 1..6.
        let lrs: Vec<f64> = (1..=6).map(|k| linear_warmup_decay(k, 2, 6, 1.0)).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        assert_eq!(linear_warmup_decay(1, 0, 4, 2.0), 2.0);
        assert_eq!(linear_warmup_decay(9, 0, 4, 2.0), 0.0);
    }

    #[test]
    fn cosine_schedule_matches_nanogpt() {
        // get_lr(it) with learning_rate 1e-3, min_lr 1e-4, warmup_iters 100, lr_decay_iters 2000.
        let lr = |it: usize| warmup_cosine(it + 1, 100, 2000, 1e-3, 1e-4);
        assert!((lr(0) - 1e-3 / 101.0).abs() < 1e-15);
        assert!((lr(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-15);
        assert!((lr(100) - 1e-3).abs() < 1e-15);
        assert!((lr(1050) - 5.5e-4).abs() < 1e-12);
        assert!((lr(2000) - 1e-4).abs() < 1e-15);
        assert_eq!(lr(2500), 1e-4);
    }

    #[test]
    fn peaks_at_warmup_then_decays() {
        let peak = inverse_sqrt(4000, 512, 4000, 1.0);
        assert!((peak - 512f64.powf(-0.5) * 4000f64.powf(-0.5)).abs() < 1e-12);
        assert!(inverse_sqrt(2000, 512, 4000, 1.0) < peak);
        assert!(inverse_sqrt(8000, 512, 4000, 1.0) < peak);
        assert!((inverse_sqrt(1000, 512, 4000, 1.0) * 2.0 - inverse_sqrt(2000, 512, 4000, 1.0)).abs() < 1e-12);
    }
}
