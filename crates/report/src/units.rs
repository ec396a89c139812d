//! Human-readable numbers with their units, chosen so that columns of very different
//! magnitudes stay readable: bytes in binary units (GiB: what allocators and nvidia-smi show),
//! FLOPs and rates in decimal units (what datasheets quote).

/// 1536 → "1.50 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// Decimal prefix: 1.23e12 with unit "FLOP" → "1.23 TFLOP".
pub fn si(v: f64, unit: &str) -> String {
    const PREFIXES: [(f64, &str); 6] = [
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ];
    if !v.is_finite() {
        return format!("{v} {unit}");
    }
    for (scale, p) in PREFIXES {
        if v.abs() >= scale {
            return format!("{:.2} {p}{unit}", v / scale);
        }
    }
    format!("{v:.2} {unit}")
}

/// Seconds with a unit that keeps three significant figures: "812 ns", "3.41 ms", "2.5 h".
pub fn seconds(s: f64) -> String {
    if !s.is_finite() {
        return format!("{s}");
    }
    let a = s.abs();
    if a == 0.0 {
        "0 s".to_string()
    } else if a < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if a < 1e-3 {
        format!("{:.2} µs", s * 1e6)
    } else if a < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else if a < 120.0 {
        format!("{s:.2} s")
    } else if a < 2.0 * 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else if a < 3.0 * 86400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86400.0)
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A parameter count the way papers write it: 124.4M, 6.74B.
pub fn params(n: u64) -> String {
    let v = n as f64;
    if v >= 1e12 {
        format!("{:.2}T", v / 1e12)
    } else if v >= 1e9 {
        format!("{:.2}B", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        n.to_string()
    }
}

pub fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(80 << 30), "80.00 GiB");
        assert_eq!(si(1.5e12, "FLOP"), "1.50 TFLOP");
        assert_eq!(si(12.0, "FLOP"), "12.00 FLOP");
        assert_eq!(seconds(3.41e-3), "3.41 ms");
        assert_eq!(seconds(8.12e-7), "812 ns");
        assert_eq!(seconds(7200.0 * 2.0), "4.0 h");
        assert_eq!(thousands(124_439_808), "124,439,808");
        assert_eq!(thousands(12), "12");
        assert_eq!(params(124_439_808), "124.4M");
        assert_eq!(percent(0.4234), "42.3%");
    }
}
