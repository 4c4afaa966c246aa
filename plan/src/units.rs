//! Human-readable quantities: parsing memory sizes, bandwidths and FLOP rates from the command
//! line, and formatting bytes, FLOPs, rates and durations for the report.

use crate::PlanError;

const KIB: f64 = 1024.0;

/// Splits `text` into its longest leading number and the (trimmed) unit after it.
fn number_and_unit(what: &'static str, text: &str) -> Result<(f64, String), PlanError> {
    let err = |why: &str| PlanError::Parse {
        what,
        text: text.to_string(),
        why: why.to_string(),
    };
    let t = text.trim();
    let (value, unit) = (1..=t.len())
        .rev()
        .filter(|&i| t.is_char_boundary(i))
        .find_map(|i| t[..i].trim().parse::<f64>().ok().map(|v| (v, &t[i..])))
        .ok_or_else(|| err("it does not start with a number"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(err("it must be a positive, finite number"));
    }
    Ok((value, unit.trim().to_string()))
}

/// Converts to whole units, refusing values that round to zero or overflow.
fn whole(what: &'static str, text: &str, value: f64) -> Result<u64, PlanError> {
    if !(1.0..1.8e19).contains(&value) {
        return Err(PlanError::Parse {
            what,
            text: text.to_string(),
            why: "it must be at least 1 byte and below 16 EiB".into(),
        });
    }
    Ok(value as u64)
}

/// Parses a memory size: a positive number with an optional unit, `B`, decimal `kB MB GB TB`
/// or binary `KiB MiB GiB TiB` (case-insensitive), e.g. `0.6GiB`, `512MiB`, `1.5GB`,
/// `1000000`. Fractional bytes are rounded down.
pub fn parse_bytes(text: &str) -> Result<u64, PlanError> {
    const WHAT: &str = "a memory size";
    let (v, unit) = number_and_unit(WHAT, text)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => KIB,
        "mib" => KIB * KIB,
        "gib" => KIB * KIB * KIB,
        "tib" => KIB * KIB * KIB * KIB,
        _ => {
            return Err(PlanError::Parse {
                what: WHAT,
                text: text.to_string(),
                why: format!(
                "unknown unit {unit:?}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB (e.g. 0.6GiB)"
            ),
            })
        }
    };
    whole(WHAT, text, v * scale)
}

/// The decimal multiplier of an SI prefix (`k`, `M`, `G`, `T`, `P`; empty is 1).
fn si_prefix(p: &str) -> Option<f64> {
    match p {
        "" => Some(1.0),
        "k" | "K" => Some(1e3),
        "M" => Some(1e6),
        "G" => Some(1e9),
        "T" => Some(1e12),
        "P" => Some(1e15),
        _ => None,
    }
}

/// Parses a bandwidth into bytes per second: bits (`100Mbit`, `1Gbit/s`, `100Mbps`), bytes
/// (`12.5MB/s`, `1GB`) or a bare number of bytes per second. Prefixes are decimal.
pub fn parse_bandwidth(text: &str) -> Result<f64, PlanError> {
    const WHAT: &str = "a bandwidth";
    let (v, unit) = number_and_unit(WHAT, text)?;
    let u = unit.strip_suffix("/s").unwrap_or(&unit);
    let parsed = if let Some(p) = u.strip_suffix("bit").or_else(|| u.strip_suffix("bps")) {
        si_prefix(p).map(|s| v * s / 8.0)
    } else if let Some(p) = u.strip_suffix('B') {
        si_prefix(p).map(|s| v * s)
    } else if u.is_empty() {
        Some(v)
    } else {
        None
    };
    parsed.ok_or_else(|| PlanError::Parse {
        what: WHAT,
        text: text.to_string(),
        why: format!(
            "unknown unit {unit:?}; use bits (100Mbit, 1Gbit/s, 100Mbps), bytes (12.5MB/s) or bytes/s"
        ),
    })
}

/// Parses a compute rate in FLOP/s: `1T`, `500G`, `2.5TFLOP/s`, `1e12`.
pub fn parse_flops(text: &str) -> Result<f64, PlanError> {
    const WHAT: &str = "a FLOP rate";
    let (v, unit) = number_and_unit(WHAT, text)?;
    let lower = unit.to_ascii_lowercase();
    let stem_len = ["flop/s", "flops", "flop"]
        .iter()
        .find(|s| lower.ends_with(*s))
        .map_or(unit.len(), |s| unit.len() - s.len());
    let prefix = &unit[..stem_len];
    let scale = si_prefix(prefix).or_else(|| si_prefix(&prefix.to_ascii_uppercase()));
    scale.map(|s| v * s).ok_or_else(|| PlanError::Parse {
        what: WHAT,
        text: text.to_string(),
        why: format!("unknown unit {unit:?}; use a number with k, M, G, T or P (e.g. 1T, 500G)"),
    })
}

/// Formats a memory size in binary units (`512.0 MiB`, `0.60 GiB`).
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    let units = [("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)];
    for (name, power) in units {
        let scale = KIB.powi(power);
        if b >= scale {
            return format!("{} {name}", sig3(b / scale));
        }
    }
    format!("{b} B")
}

/// Formats a traffic volume in decimal units (`168 MB`, `81.9 kB`).
pub fn traffic(b: f64) -> String {
    scaled(b, "B")
}

/// Formats a FLOP count (`378 GFLOP`).
pub fn flop(f: f64) -> String {
    scaled(f, "FLOP")
}

/// Formats a bandwidth in bits per second (`100 Mbit/s`).
pub fn bandwidth(bytes_per_s: f64) -> String {
    scaled(bytes_per_s * 8.0, "bit/s")
}

/// Formats a FLOP rate (`1.00 TFLOP/s`).
pub fn flop_rate(f: f64) -> String {
    scaled(f, "FLOP/s")
}

/// Formats a duration in seconds (`2.41 s`, `310 ms`, `1.5 min`... as seconds or hours).
pub fn seconds(s: f64) -> String {
    if s >= 3600.0 {
        format!("{} h", sig3(s / 3600.0))
    } else if s >= 60.0 {
        format!("{} min", sig3(s / 60.0))
    } else if s >= 1.0 {
        format!("{} s", sig3(s))
    } else if s >= 1e-3 || s == 0.0 {
        format!("{} ms", sig3(s * 1e3))
    } else {
        format!("{} µs", sig3(s * 1e6))
    }
}

/// Formats a rate with three significant digits (`0.0617`, `12.4`, `1234`).
pub fn rate(r: f64) -> String {
    if r >= 1000.0 {
        format!("{r:.0}")
    } else {
        sig3(r)
    }
}

/// Formats a count with a decimal suffix (`72.7B`, `18.9M`, `8.19k`).
pub fn count(n: u64) -> String {
    let n = n as f64;
    for (p, s) in [("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)] {
        if n >= s {
            return format!("{}{p}", sig3(n / s));
        }
    }
    sig3(n)
}

/// A value with a decimal SI prefix and `unit`.
fn scaled(v: f64, unit: &str) -> String {
    let prefixes = [("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)];
    for (p, s) in prefixes {
        if v >= s {
            return format!("{} {p}{unit}", sig3(v / s));
        }
    }
    format!("{} {unit}", sig3(v))
}

/// Three significant digits (at least), without exponent notation.
fn sig3(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        let digits = (2 - v.log10().floor() as i32).max(0) as usize;
        format!("{v:.digits$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("24GiB").unwrap(), 24 << 30);
        assert_eq!(parse_bytes("0.6GiB").unwrap(), 644_245_094);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("1000000").unwrap(), 1_000_000);
        assert_eq!(parse_bytes(" 2 gib ").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("100kB").unwrap(), 100_000);
    }

    #[test]
    fn bad_memory_sizes_say_why() {
        for bad in [
            "",
            "GiB",
            "-1GiB",
            "0",
            "1.5 parsecs",
            "nanGiB",
            "0.1B",
            "1e30GiB",
        ] {
            let e = parse_bytes(bad).expect_err(bad).to_string();
            assert!(e.contains("memory size"), "{bad}: {e}");
        }
        let e = parse_bytes("3 bananas").unwrap_err().to_string();
        assert!(e.contains("unknown unit") && e.contains("GiB"), "{e}");
    }

    #[test]
    fn bandwidths() {
        assert_eq!(parse_bandwidth("100Mbit").unwrap(), 12.5e6);
        assert_eq!(parse_bandwidth("1Gbit/s").unwrap(), 125e6);
        assert_eq!(parse_bandwidth("10Gbps").unwrap(), 1.25e9);
        assert_eq!(parse_bandwidth("12.5MB/s").unwrap(), 12.5e6);
        assert_eq!(parse_bandwidth("1000").unwrap(), 1000.0);
        assert!(parse_bandwidth("100 furlongs").is_err());
        assert!(parse_bandwidth("100Xbit").is_err());
    }

    #[test]
    fn flop_rates() {
        assert_eq!(parse_flops("1T").unwrap(), 1e12);
        assert_eq!(parse_flops("500G").unwrap(), 5e11);
        assert_eq!(parse_flops("2.5TFLOP/s").unwrap(), 2.5e12);
        assert_eq!(parse_flops("1e12").unwrap(), 1e12);
        assert_eq!(parse_flops("3 tflops").unwrap(), 3e12);
        assert!(parse_flops("1Q").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(644_245_094), "614 MiB");
        assert_eq!(bytes(24 << 30), "24.0 GiB");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(traffic(167_772_160.0), "168 MB");
        assert_eq!(flop(3.78e11), "378 GFLOP");
        assert_eq!(bandwidth(12.5e6), "100 Mbit/s");
        assert_eq!(rate(0.06171), "0.0617");
        assert_eq!(seconds(0.31), "310 ms");
        assert_eq!(seconds(3.39e-6), "3.39 µs");
        assert_eq!(count(72_747_327_488), "72.7B");
        assert_eq!(count(18_878_464), "18.9M");
    }
}
