//! Intel AMX: eight tile registers of up to 16 rows × 64 bytes, and two dot-product instructions on them that
//! the panel-stored products use. Each adds the product of a 16-row tile of activations and a tile of weights
//! into a 16 × 16 tile of 4-byte sums:
//! - `tdpbusd` (AMX-INT8): unsigned bytes × signed bytes, groups of 4 summed into i32 — 16 384 multiply-adds;
//! - `tdpbf16ps` (AMX-BF16): bf16 × bf16, pairs summed into f32 — 8 192 multiply-adds.
//!
//! Either way a weight tile is 16 rows of 64 bytes, each row one group of inputs (4 bytes or 2 bf16) for 16
//! output channels: exactly 16 groups of a panel ([`super::panels`]), so both kernels read their panels the
//! same way. Rust has no stable AMX intrinsics, so the instructions are written as inline assembly.

use std::arch::asm;

use super::panels::{PAIR, PANEL};

/// Rows of a tile.
pub(super) const ROWS: usize = 16;

/// Tiles 0–3 hold sums (rows 0–15 and 16–31 × panels 0 and 1), 4–5 activations, 6–7 weights: all 16 rows of
/// 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1; // palette 1
    let mut t = 0;
    while t < 8 {
        bytes[16 + 2 * t] = 64; // bytes a row, little-endian u16
        bytes[48 + t] = ROWS as u8;
        t += 1;
    }
    TileConfig(bytes)
};

/// The dot products a CPU's tiles can do (cpuid leaf 7, edx bits 22, 24 and 25).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Product {
    /// `tdpbusd`.
    Int8,
    /// `tdpbf16ps`.
    Bf16,
}

/// Whether the CPU has AMX tiles with `product` and Linux lets this process use the tile state (it must be
/// asked for once: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)). `QKV_NO_AMX=1` says no, to measure
/// the other kernels on one machine.
pub(super) fn usable(product: Product) -> bool {
    static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static HAS: [std::sync::OnceLock<bool>; 2] = [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    let bit = match product {
        Product::Int8 => 25,
        Product::Bf16 => 22,
    };
    *HAS[product as usize].get_or_init(|| {
        if std::env::var_os("QKV_NO_AMX").is_some() || !is_x86_feature_detected!("avx512f") {
            return false;
        }
        #[allow(unused_unsafe)]
        // SAFETY: cpuid leaf 7 exists on every CPU with AVX-512, checked above.
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        let has = |b: u32| (leaf.edx >> b) & 1 == 1;
        has(24) && has(bit) && *GRANTED.get_or_init(request_tile_state)
    })
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let status: i64;
    // SAFETY: the arch_prctl system call with these arguments only changes this process's permissions; syscall
    // clobbers rcx and r11.
    unsafe {
        asm!("syscall", inlateout("rax") ARCH_PRCTL => status, in("rdi") ARCH_REQ_XCOMP_PERM,
             in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    status == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Loads the tile configuration on this thread.
///
/// # Safety
/// [`usable`] must have returned true.
pub(super) unsafe fn configure() {
    asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
}

/// Gives the tile state back (so that the thread's context switches stay small).
///
/// # Safety
/// As [`configure`].
pub(super) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// Tile-sized steps: sums[r][j] for 16 rows (32 when `tall`) of activations (rows `row_bytes` apart, 64 bytes
/// a step) against one pair of panels of `groups` (a multiple of 16) groups of 64 bytes, with `$dot`.
macro_rules! tile_sums {
    ($name:ident, $x:ty, $w:ty, $sum:ty, $dot:literal) => {
        /// # Safety
        /// The tiles are configured and the CPU has the instruction; x holds the rows read, w two panels of
        /// `groups` (a multiple of 16) groups.
        pub(super) unsafe fn $name(
            x: &[$x],
            row_bytes: usize,
            w: &[$w],
            groups: usize,
            tall: bool,
            sums: &mut [[$sum; PAIR]; 2 * ROWS],
        ) {
            let tiles = 1 + usize::from(tall);
            debug_assert!(groups.is_multiple_of(16) && std::mem::size_of_val(x) >= tiles * ROWS * row_bytes);
            debug_assert!(std::mem::size_of_val(w) >= 2 * groups * 64);
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            let (x, w0) = (x.as_ptr().cast::<u8>(), w.as_ptr().cast::<u8>());
            let w1 = w0.add(groups * 64);
            for step in 0..groups / 16 {
                let (a, b0, b1) = (x.add(64 * step), w0.add(1024 * step), w1.add(1024 * step));
                asm!(
                    "tileloadd tmm4, [{a} + {stride} * 1]",
                    "tileloadd tmm6, [{b0} + {row} * 1]",
                    "tileloadd tmm7, [{b1} + {row} * 1]",
                    concat!($dot, " tmm0, tmm4, tmm6"),
                    concat!($dot, " tmm1, tmm4, tmm7"),
                    a = in(reg) a, b0 = in(reg) b0, b1 = in(reg) b1, stride = in(reg) row_bytes,
                    row = in(reg) 64usize, options(nostack, readonly),
                );
                if tall {
                    asm!(
                        "tileloadd tmm5, [{a} + {stride} * 1]",
                        concat!($dot, " tmm2, tmm5, tmm6"),
                        concat!($dot, " tmm3, tmm5, tmm7"),
                        a = in(reg) a.add(ROWS * row_bytes), stride = in(reg) row_bytes,
                        options(nostack, readonly),
                    );
                }
            }
            let stride = PAIR * 4;
            let out = sums.as_mut_ptr().cast::<$sum>();
            asm!(
                "tilestored [{c0} + {s} * 1], tmm0",
                "tilestored [{c1} + {s} * 1], tmm1",
                "tilestored [{c2} + {s} * 1], tmm2",
                "tilestored [{c3} + {s} * 1], tmm3",
                c0 = in(reg) out, c1 = in(reg) out.add(PANEL), c2 = in(reg) out.add(ROWS * PAIR),
                c3 = in(reg) out.add(ROWS * PAIR + PANEL), s = in(reg) stride,
                options(nostack),
            );
        }
    };
}

tile_sums!(int8_sums, u8, i8, i32, "tdpbusd");
tile_sums!(bf16_sums, u16, u16, f32, "tdpbf16ps");
