//! Process-wide counters of the wall time spent inside dense matrix products (metarep-kernels'
//! own gemm calls, the candle matmuls it issues, and products others report through
//! [`count`]), so that a benchmark can split a step
//! into matmul time and everything else. Counting costs two clock reads per product; the
//! counters are shared by every thread of the process, so read them around code that runs
//! alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static NANOS: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
static FLOP: AtomicU64 = AtomicU64::new(0);

/// What the matmul counters hold since the last [`reset`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MatmulTime {
    /// Wall seconds inside products.
    pub seconds: f64,
    /// Products run.
    pub calls: u64,
    /// Floating-point operations of those products (`2·m·n·k` each).
    pub flop: u64,
}

impl MatmulTime {
    /// Achieved rate inside the products, in GFLOP/s (0 when nothing ran).
    pub fn gflops(&self) -> f64 {
        if self.seconds > 0.0 {
            self.flop as f64 / self.seconds / 1e9
        } else {
            0.0
        }
    }
}

/// The counters' current values.
pub fn matmul_time() -> MatmulTime {
    MatmulTime {
        seconds: NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
        calls: CALLS.load(Ordering::Relaxed),
        flop: FLOP.load(Ordering::Relaxed),
    }
}

/// Sets the counters to zero.
pub fn reset() {
    for c in [&NANOS, &CALLS, &FLOP] {
        c.store(0, Ordering::Relaxed);
    }
}

/// Runs `f`, a dense product of `flop` floating-point operations, adding its time to the
/// counters (for products issued outside this crate, such as a model's attention matmuls).
pub fn count<R>(flop: u64, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let out = f();
    NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    CALLS.fetch_add(1, Ordering::Relaxed);
    FLOP.fetch_add(flop, Ordering::Relaxed);
    out
}

/// [`count`] for a product of shape `m × k` by `k × n`.
pub(crate) fn timed<R>((m, n, k): (usize, usize, usize), f: impl FnOnce() -> R) -> R {
    count(2 * (m * n * k) as u64, f)
}
