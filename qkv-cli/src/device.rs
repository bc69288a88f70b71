//! `--device`: where models are loaded, run and trained, parsed once at start-up into the library's
//! `Placement` (this build: `cpu`).

use std::sync::OnceLock;

use anyhow::Result;
use candle_core::Device;
use qkv::device::Placement;

static PLACEMENT: OnceLock<Placement> = OnceLock::new();

/// Parses `--device` (before any command runs).
pub fn choose(name: &str) -> Result<()> {
    let placement: Placement = name.parse()?;
    placement.device()?;
    let _ = PLACEMENT.set(placement);
    Ok(())
}

/// The placement chosen with `--device`.
pub fn placement() -> Placement {
    PLACEMENT.get().copied().unwrap_or_default()
}

/// Its device.
pub fn device() -> Device {
    placement().device().unwrap_or(Device::Cpu)
}

/// `--dtype`, shared by the inference commands.
#[derive(clap::Args)]
pub struct Precision {
    /// Weights of the matrix products at inference: f32, bf16 (half the bytes) or int8 (a quarter; one scale
    /// per output channel). Converted at load; without it, the dtype the directory was saved in (`qkv convert
    /// --dtype`), else f32
    #[arg(long)]
    pub dtype: Option<qkv::WeightDtype>,
}

impl Precision {
    /// `--dtype`, else the dtype model directory `dir` was saved in.
    pub fn dtype_for(&self, dir: &std::path::Path) -> qkv::Result<qkv::WeightDtype> {
        qkv::hub::reduced::dtype_or_stored(self.dtype, dir)
    }
}
