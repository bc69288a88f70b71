//! Where models run, as a value that command lines parse and training options store. This build computes on
//! the CPU: candle is compiled without its CUDA and Metal features, so `cpu` is the one placement today, and the
//! rest of the library takes the `candle_core::Device` it gives, so a build with those features adds variants
//! here and nothing else.

use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where a model's tensors live and compute: `cpu` on the command line and in saved options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The CPU, with matrix products on the rayon thread pool.
    #[default]
    Cpu,
}

impl Placement {
    /// The candle device for this placement.
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

/// Starts the global pool of `threads` workers that matrix products and qkv's kernels run on, before the first
/// tensor operation would start one itself. A count past [`crate::limits::MAX_THREADS`], or more threads than
/// the system lets this process start, is an error naming the option (rayon's own start would panic).
pub fn start_thread_pool(threads: usize) -> Result<()> {
    crate::limits::at_most("threads", threads, crate::limits::MAX_THREADS)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
        .map_err(|e| Error::config("threads", threads, format!("a number of threads this system can start ({e})")))
}
