//! How numbers read to a person: counts with their noun in the right number, byte sizes in
//! one unit system (IEC: KiB, MiB, GiB) and rounded rates, the same in bars, status and summary.

/// `1 ticket`, `2 tickets`, `0 tickets`, `2 retries`. `noun` is the singular.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {}", plural(n, noun))
}

/// `noun`, or its plural when `n` is not 1.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        noun.to_string()
    } else if let Some(stem) = noun
        .strip_suffix('y')
        .filter(|stem| !stem.ends_with(['a', 'e', 'i', 'o', 'u']))
    {
        format!("{stem}ies")
    } else if noun.ends_with('s') || noun.ends_with('x') || noun.ends_with("ch") {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// A size in IEC units with one decimal: `512 B`, `549.8 KiB`, `77.4 MiB`. The one function
/// every byte count a person reads goes through (progress bar, status, summary, check).
pub fn bytes(n: u64) -> String {
    match byte_unit(n) {
        ("B", _) => format!("{n} B"),
        (unit, scale) => format!("{:.1} {unit}", n as f64 / scale),
    }
}

/// The IEC unit `n` bytes read best in, and its size in bytes: `("MiB", 1048576.0)`. Also
/// what a chart of byte counts is scaled by, so it speaks the same units.
pub fn byte_unit(n: u64) -> (&'static str, f64) {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut scale = 1.0;
    let mut unit = 0;
    while n as f64 >= scale * 1024.0 && unit < UNITS.len() - 1 {
        scale *= 1024.0;
        unit += 1;
    }
    (UNITS[unit], scale)
}

/// A rate rounded to one decimal: `19.9/s`.
pub fn rate(per_sec: f64) -> String {
    format!("{:.1}/s", finite(per_sec))
}

/// A byte rate: `12.3 MiB/s`.
pub fn byte_rate(per_sec: f64) -> String {
    format!("{}/s", bytes(finite(per_sec).round() as u64))
}

/// A duration in whole seconds, as `45s`, `3m07s` or `2h05m`.
pub fn duration_secs(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

/// A duration or an age as operators write it: `30d`, `12h`, `90m`, `45s`, `2w`, `1d 12h`
/// (`0s` too: `prune --older-than 0s` means everything finished). `--max-duration` and
/// `prune --older-than` read it the same way.
pub fn duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not an age: {e} (say 30d, 12h, 90m or 45s)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_say_one_in_the_singular_and_others_in_the_plural() {
        assert_eq!(count(0u64, "ticket"), "0 tickets");
        assert_eq!(count(1u64, "ticket"), "1 ticket");
        assert_eq!(count(2u64, "problem"), "2 problems");
        assert_eq!(count(1u64, "problem"), "1 problem");
        assert_eq!(count(3u64, "batch"), "3 batches");
        assert_eq!(count(2u64, "retry"), "2 retries");
        assert_eq!(count(2u64, "key"), "2 keys");
    }

    #[test]
    fn bytes_use_one_iec_unit_with_one_decimal() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(563_035), "549.8 KiB");
        // The bar once said 77.36 MiB while the summary said 81.1 MB: now both say this.
        assert_eq!(bytes(81_117_000), "77.4 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn rates_are_rounded() {
        assert_eq!(rate(19.9322), "19.9/s");
        assert_eq!(rate(f64::NAN), "0.0/s");
        assert_eq!(byte_rate(1_572_864.4), "1.5 MiB/s");
        assert_eq!(duration_secs(187), "3m07s");
    }

    #[test]
    fn durations_are_numbers_with_units() {
        use std::time::Duration;
        let day = 24 * 3600;
        for (text, secs) in [
            ("30d", 30 * day),
            ("12h", 12 * 3600),
            ("90m", 90 * 60),
            ("90min", 90 * 60),
            ("45s", 45),
            ("2w", 14 * day),
            (" 0s ", 0),
        ] {
            assert_eq!(duration(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(duration("1d 12h"), Ok(Duration::from_secs(36 * 3600)));
        for bad in ["30", "d", "-1d", "3x", "", "99999999999999999999d"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
