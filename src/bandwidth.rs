//! `--bwlimit`: upload bytes per second, one budget for every process sharing the store.
//!
//! Bytes are counted in [`UNIT`]s through a rate budget like the API's (the `upload-bytes`
//! budget, in units per second): an upload's body is read in units, and each unit waits for
//! its turn before the connection gets it. Every process sharing the store draws on the
//! same budget, so the sum of their uploads stays under the limit; given different limits,
//! the lowest applies to all, as for the API rate.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::rate::{Rate, RateGate};

/// The bytes one turn of the budget lets through: an upload's body is read in pieces of
/// this size when a limit is set.
pub const UNIT: u64 = 64 * 1024;

/// Upload bytes per second, as operators write it: `20MiB/s`, `500KiB/s`, `2MB/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate {
    pub bytes_per_sec: u64,
}

/// The error of parsing a byte rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an upload limit: write it as a size per second, e.g. 20MiB/s, 500KiB/s or \
     2MB/s, of at least 64KiB/s"
)]
pub struct BadByteRate(pub String);

impl FromStr for ByteRate {
    type Err = BadByteRate;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadByteRate(s.to_string());
        let (size, per) = s.trim().rsplit_once('/').ok_or_else(bad)?;
        if !matches!(per.trim(), "s" | "sec" | "second") {
            return Err(bad());
        }
        let size: bytesize::ByteSize = size.trim().parse().map_err(|_| bad())?;
        let bytes_per_sec = size.as_u64();
        // Below one unit a second, one unit would already pass the limit in its second.
        if bytes_per_sec < UNIT {
            return Err(bad());
        }
        Ok(ByteRate { bytes_per_sec })
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/s",
            bytesize::ByteSize(self.bytes_per_sec)
                .display()
                .iec()
                .to_string()
                .replace(' ', "")
        )
    }
}

impl ByteRate {
    /// The limit in units per hour (the budget's rate): whole units, rounded down, so the
    /// budget never lets more through than the limit.
    pub fn units(&self) -> Rate {
        let per_hour = self.bytes_per_sec.saturating_mul(3600) / UNIT;
        Rate {
            count: u32::try_from(per_hour).unwrap_or(u32::MAX),
            per: Duration::from_secs(3600),
        }
    }
}

/// `chunks` (an upload's body, in pieces of at most [`UNIT`]) let through at the pace
/// `gate` allows: each piece waits for one turn per started unit it holds.
pub fn paced<S, E>(chunks: S, gate: Arc<RateGate>) -> impl Stream<Item = Result<Bytes, E>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    chunks.then(move |chunk| {
        let gate = gate.clone();
        async move {
            if let Ok(bytes) = &chunk {
                take(&gate, bytes.len() as u64).await;
            }
            chunk
        }
    })
}

/// Waits until `gate` lets `len` bytes through: one turn per started unit.
pub async fn take(gate: &RateGate, len: u64) {
    for _ in 0..units_in(len) {
        gate.acquire().await;
    }
}

/// How many turns `len` bytes take (a started unit counts whole).
pub fn units_in(len: u64) -> u64 {
    len.div_ceil(UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_in_binary_and_decimal_units() {
        let rate: ByteRate = "20MiB/s".parse().unwrap();
        assert_eq!(rate.bytes_per_sec, 20 * 1024 * 1024);
        assert_eq!(rate.to_string(), "20.0MiB/s");
        assert_eq!(
            "2MB/s".parse::<ByteRate>().unwrap().bytes_per_sec,
            2_000_000
        );
        assert_eq!(
            "500 KiB/s".parse::<ByteRate>().unwrap().bytes_per_sec,
            500 * 1024
        );
        for bad in [
            "",
            "20MiB",
            "20MiB/min",
            "fast/s",
            "1KiB/s",
            "0/s",
            "-5MiB/s",
        ] {
            assert!(bad.parse::<ByteRate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_budget_never_allows_more_than_the_limit() {
        // 20 MiB/s is 320 units a second exactly; 100,000 B/s is 1.52 units, rounded down.
        let exact: ByteRate = "20MiB/s".parse().unwrap();
        assert!((exact.units().per_sec_f64() - 320.0).abs() < 1e-9);
        let odd: ByteRate = "100000/s".parse().unwrap();
        assert!(odd.units().per_sec_f64() * UNIT as f64 <= 100_000.0);
        assert_eq!(units_in(0), 0);
        assert_eq!(units_in(1), 1);
        assert_eq!(units_in(UNIT), 1);
        assert_eq!(units_in(UNIT + 1), 2);
    }
}
