//! Rate limits: per kind of call, a budget shared through the store by every process (or,
//! alone, a `governor` quota), plus a pause that a `429`'s `Retry-After` sets for every
//! worker, not just the one that got it.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use visibuild_queue::Budget;
use visibuild_queue::budget::Slot;

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

/// The API rate as operators give it: a fixed [`Rate`], or `auto` (learn the server's
/// limit), optionally capped: `auto:50/s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ApiRate {
    Fixed(Rate),
    Auto { max: Option<Rate> },
}

/// Calls per second an `auto` rate with no cap never goes above.
pub const AUTO_MAX_PER_SEC: u32 = 1000;

/// What an `auto` rate paces at before it shares the store's budget (a handful of calls
/// before the run: token, pre-flight).
const AUTO_LOCAL_PER_SEC: u32 = 4;

impl ApiRate {
    /// Whether the server's limit is learned.
    pub fn is_auto(&self) -> bool {
        matches!(self, ApiRate::Auto { .. })
    }

    /// The rate never to go above: the fixed rate, or the cap of `auto`.
    pub fn ceiling(&self) -> Rate {
        match self {
            ApiRate::Fixed(rate) | ApiRate::Auto { max: Some(rate) } => *rate,
            ApiRate::Auto { max: None } => Rate::per_second(AUTO_MAX_PER_SEC),
        }
    }

    /// The rate one process paces at on its own, before it shares the store's budget.
    pub fn alone(&self) -> Rate {
        match self {
            ApiRate::Fixed(rate) => *rate,
            ApiRate::Auto { max } => {
                let start = Rate::per_second(AUTO_LOCAL_PER_SEC);
                match max {
                    Some(max) if max.per_sec_f64() < start.per_sec_f64() => *max,
                    _ => start,
                }
            }
        }
    }
}

impl From<Rate> for ApiRate {
    fn from(rate: Rate) -> Self {
        ApiRate::Fixed(rate)
    }
}

impl fmt::Display for ApiRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiRate::Fixed(rate) => write!(f, "{rate}"),
            ApiRate::Auto { max: None } => write!(f, "auto"),
            ApiRate::Auto { max: Some(max) } => write!(f, "auto:{max}"),
        }
    }
}

/// The error of parsing an API rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an API rate: write N/s, N/min or N/h with N a positive whole number, \
     `auto` to learn the server's limit, or `auto:N/s` to learn it up to N/s"
)]
pub struct BadApiRate(pub String);

impl FromStr for ApiRate {
    type Err = BadApiRate;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadApiRate(s.to_string());
        let text = s.trim();
        let Some(rest) = text.strip_prefix("auto") else {
            return text.parse().map(ApiRate::Fixed).map_err(|_| bad());
        };
        if rest.is_empty() {
            return Ok(ApiRate::Auto { max: None });
        }
        let max = rest.strip_prefix(':').ok_or_else(bad)?;
        let max: Rate = max.parse().map_err(|_| bad())?;
        Ok(ApiRate::Auto { max: Some(max) })
    }
}

/// One kind of call's limiter: waits for the rate, and for any pause a 429 imposed. Alone it
/// paces this process (a `governor` quota); once [`share`](Self::share)d it takes its turns
/// from a budget in the store that every process sharing the store draws on.
pub struct RateGate {
    limiter: Option<DefaultDirectRateLimiter>,
    paused_until: Mutex<Option<Instant>>,
    shared: OnceLock<Arc<Budget>>,
    /// When the store's trouble was last logged (once per 30 s).
    warned: Mutex<Option<Instant>>,
}

impl RateGate {
    /// `None` means unlimited (still honours `Retry-After` pauses).
    pub fn new(rate: Option<Rate>) -> Self {
        Self {
            limiter: rate.map(|r| RateLimiter::direct(r.quota())),
            paused_until: Mutex::new(None),
            shared: OnceLock::new(),
            warned: Mutex::new(None),
        }
    }

    /// From now on take turns from `budget` (shared through the store) instead of this
    /// process's own quota. Once only: a second budget is ignored.
    pub fn share(&self, budget: Arc<Budget>) {
        let _ = self.shared.set(budget);
    }

    /// The shared budget, once there is one.
    pub fn budget(&self) -> Option<&Arc<Budget>> {
        self.shared.get()
    }

    /// Wait until one call may start; it leaves at once.
    pub async fn acquire(&self) {
        let turn = self.reserve().await;
        let turn = self.wait(turn).await;
        self.depart(turn).await;
    }

    /// A turn for one call that is near but not yet waited for (see [`Budget::reserve`]):
    /// do what must come just before the call, then [`wait`](Self::wait) for it.
    pub async fn reserve(&self) -> Turn {
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let Some(budget) = self.shared.get() else {
                if let Some(limiter) = &self.limiter {
                    limiter.until_ready().await;
                }
                // A pause may have begun while we waited for the quota.
                if self.paused_until().is_none() {
                    return Turn(None);
                }
                continue;
            };
            match budget.reserve().await {
                Ok(slot) => return Turn(Some(slot)),
                Err(e) => self.store_trouble(budget, &e).await,
            }
        }
    }

    /// Wait for `turn` to start. One that cannot be used after all (it passed while the
    /// caller was busy, or a 429 paused everyone) is replaced by a fresh one: the turn
    /// waited for, to [`depart`](Self::depart) on.
    pub async fn wait(&self, turn: Turn) -> Turn {
        self.wait_ahead(turn, Duration::ZERO).await
    }

    /// As [`wait`](Self::wait), waking `lead` early, for a caller with something to do
    /// before the call leaves (see [`Budget::wait_for_ahead`]).
    pub async fn wait_ahead(&self, turn: Turn, lead: Duration) -> Turn {
        let Some(budget) = self.shared.get() else {
            return turn;
        };
        let mut turn = turn;
        loop {
            let Turn(Some(slot)) = turn else {
                return turn;
            };
            if budget.wait_for_ahead(slot, lead).await && self.paused_until().is_none() {
                return turn;
            }
            turn = self.reserve().await;
        }
    }

    /// The call on `turn` (waited for) leaves now: call it right before the request goes.
    /// If it can no longer leave on that turn (what the caller did since the wait took
    /// long, or a 429 paused everyone; see [`Budget::depart`]), a fresh one is waited for.
    pub async fn depart(&self, turn: Turn) {
        let Some(budget) = self.shared.get() else {
            return;
        };
        let mut turn = turn;
        loop {
            let Turn(Some(slot)) = turn else {
                return;
            };
            if budget.depart(slot).await && self.paused_until().is_none() {
                return;
            }
            let fresh = self.reserve().await;
            turn = self.wait(fresh).await;
        }
    }

    /// A call through this gate left at `sent` and was answered at `answered` (see
    /// [`Budget::answered`]: a late arrival holds the next call back).
    pub fn answered(&self, sent: Instant, answered: Instant) {
        if let Some(budget) = self.shared.get() {
            budget.answered(sent, answered);
        }
    }

    /// Every caller of this gate waits `delay` from now (a 429's `Retry-After`); with a
    /// shared budget, so does every process sharing it, and the budget adapts.
    pub async fn pause(&self, delay: Duration) {
        self.pause_sent(delay, Instant::now()).await;
    }

    /// As [`pause`](Self::pause), for the refusal of a call that left at `sent` (a budget
    /// learning the server's limit learns the rate the server last took before it).
    pub async fn pause_sent(&self, delay: Duration, sent: Instant) {
        let until = Instant::now() + delay;
        {
            let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            if paused.is_none_or(|p| p < until) {
                *paused = Some(until);
            }
        }
        if let Some(budget) = self.shared.get()
            && let Err(e) = budget.refused_sent(delay, sent).await
        {
            tracing::warn!(budget = %budget.settings().name, error = %e,
                "cannot tell the shared rate budget of a 429; pausing this process only");
        }
    }

    /// The store cannot be reached for a turn: the call is held back (the rate is not
    /// exceeded by guessing), and the run's own outage handling decides when to stop.
    async fn store_trouble(&self, budget: &Budget, error: &visibuild_queue::Error) {
        let due = {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            let due = warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(30));
            if due {
                *warned = Some(Instant::now());
            }
            due
        };
        if due {
            tracing::warn!(budget = %budget.settings().name, error = %error,
                "cannot reserve from the shared rate budget; waiting for the store");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
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

/// A turn reserved ([`RateGate::reserve`]) or waited for ([`RateGate::wait`]); `None` for
/// a gate of its own, whose turn was waited for at once.
#[derive(Debug, Clone, Copy)]
pub struct Turn(Option<Slot>);

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

    #[test]
    fn api_rates_are_fixed_or_auto_with_an_optional_cap() {
        assert_eq!(
            "20/s".parse::<ApiRate>().unwrap(),
            ApiRate::Fixed(Rate::per_second(20))
        );
        let auto: ApiRate = "auto".parse().unwrap();
        assert_eq!(auto, ApiRate::Auto { max: None });
        assert_eq!(auto.ceiling(), Rate::per_second(AUTO_MAX_PER_SEC));
        let capped: ApiRate = " auto:50/s ".parse().unwrap();
        assert_eq!(
            capped,
            ApiRate::Auto {
                max: Some(Rate::per_second(50))
            }
        );
        assert_eq!(capped.ceiling(), Rate::per_second(50));
        assert_eq!(capped.to_string(), "auto:50/s");
        let slow: ApiRate = "auto:120/min".parse().unwrap();
        assert!((slow.alone().per_sec_f64() - 2.0).abs() < 1e-9, "{slow}");
        for bad in [
            "autox",
            "auto:",
            "auto:0/s",
            "auto 5/s",
            "auto:fast",
            "automatic",
            "0/s",
        ] {
            let err = bad.parse::<ApiRate>().unwrap_err();
            assert!(err.to_string().contains("auto:N/s"), "{bad}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller_until_it_ends() {
        let gate = RateGate::new(None);
        gate.pause(Duration::from_secs(5)).await;
        let start = Instant::now();
        gate.acquire().await;
        assert!(Instant::now() - start >= Duration::from_secs(5));
    }
}
