//! `--device`: where models are loaded and run. This build computes on the CPU (candle is built without its
//! CUDA and Metal features), so `cpu` is the one choice today; the library takes a `candle_core::Device`
//! everywhere, so a build with those features only has to map more names here.

use std::sync::OnceLock;

use anyhow::{bail, Result};
use candle_core::Device;

static DEVICE: OnceLock<Device> = OnceLock::new();

/// Parses `--device` once, at start-up.
pub fn choose(name: &str) -> Result<()> {
    let device = match name {
        "cpu" => Device::Cpu,
        other => bail!("--device {other}: this build runs on the CPU only (expected `cpu`)"),
    };
    let _ = DEVICE.set(device);
    Ok(())
}

/// The device chosen with `--device` (the CPU before the choice).
pub fn device() -> Device {
    DEVICE.get().cloned().unwrap_or(Device::Cpu)
}
