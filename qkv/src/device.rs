//! Where models run, as a value that command lines parse and training options store. This build computes on
//! the CPU: candle is compiled without its CUDA and Metal features, so `cpu` is the one placement today, and the
//! rest of the library takes the `candle_core::Device` it gives, so a build with those features adds variants
//! here and nothing else.

use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    #[default]
    Cpu,
}

impl Placement {
    pub fn device(self) -> Result<Device> {
        match self {
            Placement::Cpu => Ok(Device::Cpu),
        }
    }
}

impl FromStr for Placement {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(Placement::Cpu),
            other => Err(Error::config("device", other, "cpu (this build has no CUDA or Metal support)")),
        }
    }
}
