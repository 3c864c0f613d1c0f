//! The sandbox's time: every expiry (presigned URLs, OAuth tokens) and the rate limit read
//! it, so a test moves a [`ManualClock`] instead of sleeping. Latency knobs use real time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Where the sandbox reads "now". Cheap to clone; clones of a manual clock share its time.
#[derive(Debug, Clone, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    System,
    Manual(ManualClock),
}

impl Clock {
    /// The machine's wall clock (presigned URLs carry wall-clock dates).
    pub fn system() -> Self {
        Self(Source::System)
    }

    pub fn now(&self) -> SystemTime {
        match &self.0 {
            Source::System => SystemTime::now(),
            Source::Manual(manual) => manual.now(),
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Self {
        Self(Source::Manual(manual))
    }
}

/// A clock that stands still until it is told to move. Give the sandbox
/// `Clock::from(manual.clone())` and keep `manual` to move it.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    pub fn now(&self) -> SystemTime {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves time forward by `by`, for every clone at once.
    pub fn advance(&self, by: Duration) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) += by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_for_every_clone() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let manual = ManualClock::new(start);
        let clock = Clock::from(manual.clone());
        assert_eq!(clock.clone().now(), start);
        manual.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), start + Duration::from_millis(1500));
    }
}
