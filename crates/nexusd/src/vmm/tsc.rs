//! The host's TSC frequency, for TCG guests. Under TCG the guest's TSC runs at the host's TSC
//! rate, but the guest kernel calibrates it against an emulated PIT whose timing is erratic when
//! the host is busy; calibration then fails, the kernel waits for timer ticks that never come and
//! hangs early in boot (measured here: 4 of 4 boots under load). Passing the measured rate as
//! `tsc_early_khz=` skips that calibration (5 of 5 boots under the same load).

use std::time::{Duration, Instant};

/// Measures the host TSC rate in kHz over `window`; `None` where there is no usable TSC.
pub fn host_tsc_khz(window: Duration) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let tsc = || {
            // SAFETY: RDTSC has no preconditions on x86_64; it only reads the time-stamp counter.
            unsafe { std::arch::x86_64::_rdtsc() }
        };
        let (t0, c0) = (Instant::now(), tsc());
        std::thread::sleep(window);
        let (t1, c1) = (Instant::now(), tsc());
        let micros = t1.duration_since(t0).as_micros() as u64;
        let khz = c1.checked_sub(c0)?.checked_mul(1000)? / micros.max(1);
        (khz > 100_000).then_some(khz)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = window;
        None
    }
}
