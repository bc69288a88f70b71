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

/// Runs `work` on one of the global pool's workers while the calling thread waits (directly, when the caller is
/// a worker already), and returns what it returns. Every parallel kernel called from outside the pool hands its
/// tasks to the workers and sleeps until they are done: a GPT-2 decoding step makes some sixty such calls, and
/// each hand-off (a futex wake of a worker, then of the caller) cost more than a small matrix-vector product.
/// From a worker, a kernel splits its tasks with the other workers directly. Measured on the Intel host with 2
/// threads: a GPT-2 small decoding step 14.2 → 12.0 ms with bf16 weights and 21.1 → 19.9 ms in f32. The
/// inference layer wraps each model pass in it, and training each optimizer step; `work` must not block on other
/// work for the pool (it holds one of the workers while it runs).
pub fn on_workers<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

/// Starts the global pool of `threads` workers that matrix products and qkv's kernels run on, before the first
/// tensor operation would start one itself, with subnormal numbers flushed to zero on every worker and on the
/// calling thread ([`flush_subnormals`]). A count past [`crate::limits::MAX_THREADS`], or more threads than the
/// system lets this process start, is an error naming the option (rayon's own start would panic).
pub fn start_thread_pool(threads: usize) -> Result<()> {
    crate::limits::at_most("threads", threads, crate::limits::MAX_THREADS)?;
    flush_subnormals();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .start_handler(|_| flush_subnormals())
        .build_global()
        .map_err(|e| Error::config("threads", threads, format!("a number of threads this system can start ({e})")))
}

/// Sets this thread's floating-point unit to flush subnormal results to zero (FTZ) and to read subnormal operands
/// as zero (DAZ). On x86 each subnormal operand or result takes a microcode assist of about a hundred cycles: a
/// deep stack whose activations and gradients fade towards zero (no residual path) trained 3.5× slower on the
/// Intel host than the same stack with residuals, for numbers below 1.2e-38 that change no result a model
/// can show. PyTorch offers the same switch (`torch.set_flush_denormal(True)`); TensorFlow sets it by default.
/// Elsewhere than x86-64 this does nothing.
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    {
        const FTZ: u32 = 1 << 15;
        const DAZ: u32 = 1 << 6;
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr read and write this thread's MXCSR register through a local variable; the
        // bits set only change how subnormal numbers are rounded, not any exception mask.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
            csr |= FTZ | DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;

    use rayon::prelude::*;

    /// The work runs on a worker of the global pool, hands back its result, and a call from inside (a nested
    /// model pass) runs in place; the kernels' parallel loops inside it still compute the same sums.
    #[test]
    fn work_runs_on_a_pool_worker() {
        assert_eq!(rayon::current_thread_index(), None, "the test harness thread is not a worker");
        let (outer, inner, sum) = super::on_workers(|| {
            let outer = rayon::current_thread_index();
            let inner = super::on_workers(rayon::current_thread_index);
            (outer, inner, (0..1000u64).into_par_iter().sum::<u64>())
        });
        assert!(outer.is_some(), "on_workers ran its work on the calling thread");
        assert_eq!(inner, outer, "a nested call moved to another worker");
        assert_eq!(sum, 499_500);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn subnormals_flush_to_zero_on_a_flushed_thread_only() {
        let tiny = f32::MIN_POSITIVE; // the smallest normal number
        let halved = |x: f32| black_box(black_box(x) * black_box(0.5));
        let subnormal = f32::from_bits(1); // the smallest subnormal, read as an operand
        let before = std::thread::spawn(move || (halved(tiny), black_box(subnormal) * black_box(2.0))).join().unwrap();
        assert!(before.0 > 0.0 && before.1 > 0.0, "without the flags subnormals stay: {before:?}");
        let after = std::thread::spawn(move || {
            super::flush_subnormals();
            (halved(tiny), black_box(subnormal) * black_box(2.0), halved(1.0))
        })
        .join()
        .unwrap();
        assert_eq!(after, (0.0, 0.0, 0.5), "FTZ flushes the result, DAZ the operand; normal numbers are untouched");
    }
}
