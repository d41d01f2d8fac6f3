//! Formatting of sizes and ratios for reports (the only place sizes become text).
use crate::units::{GIB, KIB, MIB};

/// PyTorch's `format_size` style: `512 bytes`, `1.50 KiB`, `20.00 MiB`, `23.55 GiB`.
pub fn bytes(n: u64) -> String {
    if n <= KIB {
        format!("{n} bytes")
    } else if n <= MIB {
        format!("{:.2} KiB", n as f64 / KIB as f64)
    } else if n <= GIB {
        format!("{:.2} MiB", n as f64 / MIB as f64)
    } else {
        format!("{:.2} GiB", n as f64 / GIB as f64)
    }
}

/// Always in GiB with two decimals, for tables that compare sizes.
pub fn gib(n: u64) -> String {
    format!("{:.2} GiB", n as f64 / GIB as f64)
}

/// Signed difference in GiB: `+1.20 GiB` / `-3.40 GiB`.
pub fn gib_delta(n: i64) -> String {
    let sign = if n < 0 { '-' } else { '+' };
    format!("{sign}{:.2} GiB", n.unsigned_abs() as f64 / GIB as f64)
}

/// A ratio as a percentage with one decimal: 0.123 -> `12.3%`.
pub fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn formats_like_pytorch() {
        assert_eq!(bytes(1024), "1024 bytes");
        assert_eq!(bytes(1048576), "1024.00 KiB");
        assert_eq!(bytes(20 * MIB), "20.00 MiB");
        assert_eq!(bytes(GIB + GIB / 2), "1.50 GiB");
        assert_eq!(gib_delta(-(GIB as i64)), "-1.00 GiB");
        assert_eq!(pct(0.1234), "12.3%");
    }
}
