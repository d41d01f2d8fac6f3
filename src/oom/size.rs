//! Sizes as OOM messages print them, read back into exact bytes.
//!
//! * c10 `format_size` (CUDA/HIP/XPU, MPS >= 2.8): `512 bytes`, `1.50 KiB`, `20.00 MiB`, `23.55 GiB`
//!   (`c10/core/CachingDeviceAllocator.h`; see oom-formats.md §1).
//! * MPS <= 2.7: the same thresholds with `KB`/`MB`/`GB`, binary multiples despite the names
//!   (`aten/src/ATen/mps/MPSAllocator.mm`).
//! * TSL `HumanReadableNumBytes` (TensorFlow, XLA): `112B`, `384.0KiB`, `1.97GiB` (no space).
//! * Linux `kB` in OOM-killer lines is 1024 bytes (`K(x)` in `mm/oom_kill.c`).
//!
//! The value is multiplied exactly (decimal mantissa x unit, rounded half up), so `23.55 GiB` is
//! `round(23.55 * 2^30)` with no floating-point error, and a value that does not fit in 64 bits
//! (NVML's "not available" prints `17179869184.00 GiB` = 2^64) is reported as such.

/// The bytes of one unit name, or `None` for an unknown unit. Binary in every family we read.
pub fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
        "bytes" | "byte" | "B" | "b" => 1,
        "KiB" | "KB" | "kB" | "K" | "kb" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        "TiB" | "TB" | "T" => 1 << 40,
        "PiB" | "PB" | "P" => 1 << 50,
        "EiB" | "EB" | "E" => 1 << 60,
        _ => return None,
    })
}

/// Why a printed size could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number or an unknown unit.
    Malformed,
    /// Larger than `u64::MAX` bytes.
    Overflow,
}

/// `value` (digits, optional `.` and decimals, `,` thousands separators allowed) times `unit`.
pub fn parse_value(value: &str, unit: &str) -> Result<u64, SizeError> {
    let mult = unit_bytes(unit).ok_or(SizeError::Malformed)? as u128;
    let mut mantissa: u128 = 0;
    let mut scale: u32 = 0;
    let mut seen_dot = false;
    let mut digits = 0usize;
    for c in value.chars() {
        match c {
            '0'..='9' => {
                // 24 significant digits are more than any printed size has; later decimals
                // are dropped, and a product that overflows u128 is an overflow.
                if digits >= 24 {
                    if !seen_dot {
                        return Err(SizeError::Overflow);
                    }
                    continue;
                }
                mantissa = mantissa * 10 + (c as u8 - b'0') as u128;
                if mantissa > 0 {
                    digits += 1;
                }
                if seen_dot {
                    scale += 1;
                }
            }
            '.' if !seen_dot => seen_dot = true,
            ',' if !seen_dot => {}
            _ => return Err(SizeError::Malformed),
        }
    }
    if value.is_empty() || value == "." {
        return Err(SizeError::Malformed);
    }
    let div = 10u128.pow(scale);
    let bytes = mantissa
        .checked_mul(mult)
        .and_then(|x| x.checked_add(div / 2))
        .ok_or(SizeError::Overflow)?
        / div;
    u64::try_from(bytes).map_err(|_| SizeError::Overflow)
}

/// Reads `"23.55 GiB"`, `"1.97GiB"`, `"0 bytes"`, `"12918388kB"`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    parse_value(num, unit.trim())
}

/// PyTorch's `c10::CachingAllocator::format_size`, for tests and generated messages:
/// `<= 1024` bytes as an integer, then KiB/MiB/GiB with two decimals (boundaries are `<=`).
pub fn format_size(size: u64) -> String {
    if size <= 1024 {
        format!("{size} bytes")
    } else if size <= 1_048_576 {
        format!("{:.2} KiB", size as f64 / 1024.0)
    } else if size <= 1_073_741_824 {
        format!("{:.2} MiB", size as f64 / 1_048_576.0)
    } else {
        format!("{:.2} GiB", size as f64 / 1_073_741_824.0)
    }
}

/// MPS <= 2.7 `format_size`: the same with `KB`/`MB`/`GB` (binary multiples).
pub fn format_size_mps_legacy(size: u64) -> String {
    format_size(size)
        .replace(" KiB", " KB")
        .replace(" MiB", " MB")
        .replace(" GiB", " GB")
}

/// TSL `strings::HumanReadableNumBytes` (`tsl/platform/numbers.cc`): `<1024` as `{n}B`; else divide
/// (integer) by 1024 while the value is at least 1 MiB, then print value/1024 with one decimal for
/// KiB and two for larger units.
pub fn format_tsl(size: u64) -> String {
    if size < 1024 {
        return format!("{size}B");
    }
    const UNITS: [char; 6] = ['K', 'M', 'G', 'T', 'P', 'E'];
    let mut n = size;
    let mut unit = 0;
    while n >= 1024 * 1024 && unit + 1 < UNITS.len() {
        n /= 1024;
        unit += 1;
    }
    let v = n as f64 / 1024.0;
    if unit == 0 {
        format!("{v:.1}KiB")
    } else {
        format!("{v:.2}{}iB", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exact_bytes() {
        assert_eq!(parse_size("23.55 GiB"), Ok(25_286_619_955));
        assert_eq!(parse_size("0 bytes"), Ok(0));
        assert_eq!(parse_size("1024.00 MiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.97GiB"), Ok(2_115_271_393));
        assert_eq!(parse_size("112B"), Ok(112));
        assert_eq!(parse_size("12,918,388kB"), Ok(12_918_388 * 1024));
        assert_eq!(parse_size("5.50 GB"), Ok(5_905_580_032));
    }

    #[test]
    fn nvml_not_available_overflows() {
        assert_eq!(
            parse_size("17179869184.00 GiB"),
            Err(SizeError::Overflow),
            "2^64 bytes"
        );
        assert!(parse_size("17179869183.95 GiB").is_ok());
        assert_eq!(
            parse_size("99999999999999999999999999999 bytes"),
            Err(SizeError::Overflow)
        );
        assert_eq!(
            parse_size("999999999999999999999999.5 EiB"),
            Err(SizeError::Overflow)
        );
        assert_eq!(parse_size("12 parsecs"), Err(SizeError::Malformed));
        assert_eq!(parse_size("GiB"), Err(SizeError::Malformed));
    }

    #[test]
    fn formats_like_c10() {
        assert_eq!(format_size(1024), "1024 bytes");
        assert_eq!(format_size(1_048_576), "1024.00 KiB");
        assert_eq!(format_size(1 << 30), "1024.00 MiB");
        assert_eq!(format_size(u64::MAX), "17179869184.00 GiB");
        assert_eq!(format_tsl(112), "112B");
        assert_eq!(format_tsl(384 * 1024), "384.0KiB");
        assert_eq!(format_tsl(2_110_783_744), "1.97GiB");
        assert_eq!(format_tsl(1_053_294_592), "1004.50MiB");
    }
}
