//! Facts about the guest for `info` and `handshake`: kernel release, uptime, memory, hostname.

use nix::time::{ClockId, clock_gettime};

/// Milliseconds since the guest kernel booted (`CLOCK_BOOTTIME`).
pub fn uptime_ms() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `(MemTotal, MemAvailable)` in KiB from `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("MemTotal"), field("MemAvailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_totals() {
        let text = "MemTotal:         241216 kB\nMemFree:  1 kB\nMemAvailable:     200000 kB\n";
        assert_eq!(parse_meminfo(text), (241216, 200000));
    }
}
