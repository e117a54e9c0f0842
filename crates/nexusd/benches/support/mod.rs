//! What the benchmarks share: percentiles and the one-line report.

/// The `p` quantile (0..=1) of `samples`, nearest rank.
pub fn pct(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints p50, p95 and p99 of `samples` in `unit`.
pub fn report_unit(what: &str, unit: &str, samples: &[f64]) {
    println!(
        "{what}: p50 {:.2} {unit}, p95 {:.2} {unit}, p99 {:.2} {unit} (n={})",
        pct(samples, 0.5),
        pct(samples, 0.95),
        pct(samples, 0.99),
        samples.len()
    );
}

/// [`report_unit`] in milliseconds.
pub fn report(what: &str, samples: &[f64]) {
    report_unit(what, "ms", samples)
}
