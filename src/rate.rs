//! Rate limits: a `governor` quota per kind of call, plus a shared pause that a `429`'s
//! `Retry-After` sets for every worker of the process, not just the one that got it.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// A rate as operators write it: `10/s`, `600/min`, `3600/h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn per_second(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(1),
        }
    }

    /// Calls per second, as a float (for reports).
    pub fn per_sec_f64(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }

    /// An evenly spaced quota (burst 1): no window of `per` ever sees more than `count`
    /// calls start, and a steady caller gets close to the full rate.
    fn quota(&self) -> Quota {
        let spacing = self.per / self.count.max(1);
        Quota::with_period(spacing.max(Duration::from_nanos(1)))
            .expect("spacing is positive")
            .allow_burst(NonZeroU32::MIN)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 => write!(f, "{}/s", self.count),
            60 => write!(f, "{}/min", self.count),
            3600 => write!(f, "{}/h", self.count),
            _ => write!(f, "{}/{:?}", self.count, self.per),
        }
    }
}

/// The error of parsing a rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a rate: write it as N/s, N/min or N/h with N a positive whole number")]
pub struct BadRate(pub String);

impl FromStr for Rate {
    type Err = BadRate;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRate(s.to_string());
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(bad());
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }
}

/// One kind of call's limiter: waits for the quota, and for any pause a 429 imposed.
pub struct RateGate {
    limiter: Option<DefaultDirectRateLimiter>,
    paused_until: Mutex<Option<Instant>>,
}

impl RateGate {
    /// `None` means unlimited (still honours `Retry-After` pauses).
    pub fn new(rate: Option<Rate>) -> Self {
        Self {
            limiter: rate.map(|r| RateLimiter::direct(r.quota())),
            paused_until: Mutex::new(None),
        }
    }

    /// Wait until one call may start.
    pub async fn acquire(&self) {
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            // A pause may have begun while we waited for the quota.
            if self.paused_until().is_none() {
                return;
            }
        }
    }

    /// Every caller of this gate waits `delay` from now (a 429's `Retry-After`).
    pub fn pause(&self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    fn paused_until(&self) -> Option<Instant> {
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        match *paused {
            Some(until) if until > Instant::now() => Some(until),
            _ => {
                *paused = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        assert_eq!("10/s".parse::<Rate>().unwrap(), Rate::per_second(10));
        let r: Rate = "600/min".parse().unwrap();
        assert_eq!((r.count, r.per), (600, Duration::from_secs(60)));
        assert!((r.per_sec_f64() - 10.0).abs() < 1e-9);
        for bad in ["", "10", "0/s", "-1/s", "ten/s", "10/day"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller_until_it_ends() {
        let gate = RateGate::new(None);
        gate.pause(Duration::from_secs(5));
        let start = Instant::now();
        gate.acquire().await;
        assert!(Instant::now() - start >= Duration::from_secs(5));
    }
}
