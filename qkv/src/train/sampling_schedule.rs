//! How the probability p of feeding the decoder the gold token decays over training, for scheduled sampling
//! and the oracles: pure functions of the steps (or epochs) done.
//!
//! - linear, max(floor, k − c·i), and exponential, max(floor, kⁱ) (Bengio et al., 2015, "Scheduled Sampling for
//!   Sequence Prediction with Recurrent Neural Networks", §2.4);
//! - inverse sigmoid, max(floor, k / (k + exp(i / k))) (ibid.);
//! - Zhang et al.'s (ACL 2019, eq. 15) μ / (μ + exp(e / μ)) with μ = k, which is the inverse sigmoid's formula;
//!   they count e in epochs, and it is listed under its own name so that a run says which paper it follows.
//!
//! i counts the optimizer steps done before the current one (0 at the first step) or, with `epoch` units, the
//! epochs done (0 during the first), so every schedule starts at its largest p.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The shape of the decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Decay {
    /// max(floor, k − c·i): p falls by c per unit of i.
    #[default]
    Linear,
    /// max(floor, kⁱ), k in (0, 1].
    Exponential,
    /// max(floor, k / (k + exp(i / k))): k/(k + 1) at i = 0, then a sigmoid's fall.
    InverseSigmoid,
    /// Zhang et al.'s μ / (μ + exp(e / μ)), μ = k: the inverse sigmoid under the name of the oracle paper.
    Zhang,
}

/// What i counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum ScheduleUnit {
    /// Optimizer steps.
    #[default]
    Step,
    /// Epochs completed.
    Epoch,
}

/// p(i), the probability of feeding the gold token. The JSON names are those of the translation options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GoldSchedule {
    /// The decay's shape: `linear` (default), `exponential`, `inverse_sigmoid` or `zhang`.
    #[serde(rename = "sampling_schedule")]
    pub decay: Decay,
    /// k (μ for `zhang`): linear's and exponential's starting p, in (0, 1]; the inverse sigmoid's and Zhang's
    /// scale, > 0 (p halves around i = k·ln k).
    #[serde(rename = "sampling_k")]
    pub k: f64,
    /// The linear decay's slope per unit of i, ≥ 0.
    #[serde(rename = "sampling_c")]
    pub c: f64,
    /// p never falls below this, in [0, 1].
    #[serde(rename = "sampling_floor")]
    pub floor: f64,
    /// Whether i counts optimizer steps (default) or epochs.
    #[serde(rename = "sampling_unit")]
    pub unit: ScheduleUnit,
}

impl Default for GoldSchedule {
    /// Linear from 1 down by 10⁻⁴ per step to a floor of 0.5: mild enough to leave a long run mostly gold.
    fn default() -> Self {
        Self { decay: Decay::Linear, k: 1.0, c: 1e-4, floor: 0.5, unit: ScheduleUnit::Step }
    }
}

impl GoldSchedule {
    /// p at optimizer step `step` (the first is 1) of epoch `epoch` (the first is 0).
    pub fn at(&self, step: usize, epoch: usize) -> f64 {
        let i = match self.unit {
            ScheduleUnit::Step => step.saturating_sub(1),
            ScheduleUnit::Epoch => epoch,
        };
        self.p(i as f64)
    }

    /// p after i units of training.
    pub fn p(&self, i: f64) -> f64 {
        let p = match self.decay {
            Decay::Linear => self.k - self.c * i,
            Decay::Exponential => self.k.powf(i),
            Decay::InverseSigmoid | Decay::Zhang => self.k / (self.k + (i / self.k).exp()),
        };
        p.max(self.floor).clamp(0.0, 1.0)
    }

    /// Every value in range, so that p stays a probability; errors name the option.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.floor) {
            return Err(Error::config("sampling_floor", self.floor, "a probability in [0, 1]"));
        }
        match self.decay {
            Decay::Linear | Decay::Exponential if !(self.k > 0.0 && self.k <= 1.0) => {
                let expected = format!("in (0, 1]: {} decay starts at p = k", self.decay);
                Err(Error::config("sampling_k", self.k, expected))
            }
            Decay::InverseSigmoid | Decay::Zhang if !(self.k > 0.0 && self.k.is_finite()) => {
                Err(Error::config("sampling_k", self.k, format!("a positive number for {} decay", self.decay)))
            }
            Decay::Linear if !(self.c >= 0.0 && self.c.is_finite()) => {
                Err(Error::config("sampling_c", self.c, "a slope ≥ 0 (p falls by c per unit)"))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Decay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decay::Linear => "linear",
            Decay::Exponential => "exponential",
            Decay::InverseSigmoid => "inverse-sigmoid",
            Decay::Zhang => "zhang",
        })
    }
}

impl FromStr for Decay {
    type Err = Error;

    /// The names in kebab or snake case.
    fn from_str(name: &str) -> Result<Self> {
        match name.replace('_', "-").as_str() {
            "linear" => Ok(Decay::Linear),
            "exponential" => Ok(Decay::Exponential),
            "inverse-sigmoid" => Ok(Decay::InverseSigmoid),
            "zhang" => Ok(Decay::Zhang),
            _ => Err(Error::config("sampling_schedule", name, "linear, exponential, inverse-sigmoid or zhang")),
        }
    }
}

impl TryFrom<String> for Decay {
    type Error = Error;
    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

impl FromStr for ScheduleUnit {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "step" => Ok(ScheduleUnit::Step),
            "epoch" => Ok(ScheduleUnit::Epoch),
            _ => Err(Error::config("sampling_unit", name, "step or epoch")),
        }
    }
}

impl TryFrom<String> for ScheduleUnit {
    type Error = Error;
    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(decay: Decay, k: f64, c: f64, floor: f64) -> GoldSchedule {
        GoldSchedule { decay, k, c, floor, unit: ScheduleUnit::Step }
    }

    #[test]
    fn each_decay_follows_its_formula() {
        let linear = schedule(Decay::Linear, 1.0, 0.01, 0.2);
        assert_eq!((linear.p(0.0), linear.p(50.0), linear.p(1000.0)), (1.0, 0.5, 0.2));
        let exponential = schedule(Decay::Exponential, 0.99, 0.0, 0.0);
        assert_eq!(exponential.p(0.0), 1.0);
        assert!((exponential.p(100.0) - 0.99f64.powi(100)).abs() < 1e-15);
        let sigmoid = schedule(Decay::InverseSigmoid, 10.0, 0.0, 0.0);
        assert!((sigmoid.p(0.0) - 10.0 / 11.0).abs() < 1e-15);
        // p = 1/2 where exp(i / k) = k.
        assert!((sigmoid.p(10.0 * 10f64.ln()) - 0.5).abs() < 1e-12);
        let zhang = schedule(Decay::Zhang, 12.0, 0.0, 0.0);
        assert!((zhang.p(3.0) - 12.0 / (12.0 + 0.25f64.exp())).abs() < 1e-15);
        // Falling everywhere.
        for s in [linear, exponential, sigmoid, zhang] {
            assert!((0..200).all(|i| s.p(i as f64 + 1.0) <= s.p(i as f64)), "{s:?}");
        }
    }

    #[test]
    fn the_unit_says_what_i_counts() {
        let by_step = schedule(Decay::Linear, 1.0, 0.1, 0.0);
        assert_eq!((by_step.at(1, 5), by_step.at(3, 5)), (1.0, 0.8));
        let by_epoch = GoldSchedule { unit: ScheduleUnit::Epoch, ..by_step };
        assert_eq!((by_epoch.at(1, 0), by_epoch.at(900, 0), by_epoch.at(901, 2)), (1.0, 1.0, 0.8));
    }

    #[test]
    fn bad_schedules_name_the_option() {
        let message = |s: GoldSchedule| s.validate().unwrap_err().to_string();
        assert!(message(schedule(Decay::Linear, 1.5, 0.0, 0.0)).contains("sampling_k = 1.5"));
        assert!(message(schedule(Decay::Exponential, 0.0, 0.0, 0.0)).contains("sampling_k = 0"));
        assert!(message(schedule(Decay::InverseSigmoid, -2.0, 0.0, 0.0)).contains("sampling_k = -2"));
        assert!(message(schedule(Decay::Zhang, 0.0, 0.0, 0.0)).contains("sampling_k"));
        assert!(message(schedule(Decay::Linear, 1.0, -0.1, 0.0)).contains("sampling_c"));
        assert!(message(schedule(Decay::Linear, 1.0, 0.0, 1.2)).contains("sampling_floor = 1.2"));
        assert!(GoldSchedule::default().validate().is_ok());
        assert_eq!("inverse_sigmoid".parse::<Decay>().unwrap(), Decay::InverseSigmoid);
        let err = "cosine".parse::<Decay>().unwrap_err().to_string();
        assert!(err.contains("sampling_schedule = cosine"), "{err}");
        let err = serde_json::from_str::<GoldSchedule>(r#"{"sampling_unit": "hour"}"#).unwrap_err().to_string();
        assert!(err.contains("sampling_unit = hour"), "{err}");
    }
}
