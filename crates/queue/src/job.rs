//! Jobs as the queue sees them: an id, a kind, a state, an attempt count, and two ids it does
//! not interpret (a group claims can be limited to, and the job's target).

use std::fmt;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Timestamp;

/// Attempts a job gets by default, and again when an operator retries it.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 8;

/// A queue job.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a job stands. `Blocked` jobs wait for something outside the queue (a fan-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "job_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Blocked,
    Available,
    Running,
    Completed,
    Failed,
    /// An operator cancelled it: never claimed until revived.
    Cancelled,
}

impl JobState {
    pub const ALL: &'static [JobState] = &[
        JobState::Blocked,
        JobState::Available,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Blocked => "blocked",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub kind: &'static str,
    /// `Available` or `Blocked`; anything else is refused.
    pub state: JobState,
    pub group: Option<Uuid>,
    pub target: Option<Uuid>,
    pub max_attempts: i32,
    /// When it may first run; `None` is now.
    pub run_at: Option<Timestamp>,
}

impl NewJob {
    /// An available job with no group or target and [`DEFAULT_MAX_ATTEMPTS`].
    pub fn available(kind: &'static str) -> Self {
        Self {
            kind,
            state: JobState::Available,
            group: None,
            target: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            run_at: None,
        }
    }

    /// A job that waits to be unblocked before it can be claimed.
    pub fn blocked(kind: &'static str) -> Self {
        Self {
            state: JobState::Blocked,
            ..Self::available(kind)
        }
    }
}

/// A job this worker holds until its lease runs out.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: JobId,
    pub kind: String,
    /// This claim's attempt number (1 for the first run): the fencing token.
    pub attempt: i32,
    pub max_attempts: i32,
    pub group_id: Option<Uuid>,
    pub target_id: Option<Uuid>,
}

impl ClaimedJob {
    /// The fence every later write of this claim must name.
    pub fn job_ref(&self) -> JobRef {
        JobRef {
            id: self.id,
            attempt: self.attempt,
        }
    }

    /// True when the claim went past the budget: the previous holder lost its lease on the
    /// last attempt (a crashed or killed worker). Fail such a job rather than run it, so a
    /// job that kills its worker cannot loop forever.
    pub fn is_over_budget(&self) -> bool {
        self.attempt > self.max_attempts
    }
}

/// A job and the attempt that claimed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobRef {
    pub id: JobId,
    pub attempt: i32,
}

/// A job row, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: String,
    pub state: JobState,
    pub group_id: Option<Uuid>,
    pub target_id: Option<Uuid>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: Timestamp,
    pub locked_until: Option<Timestamp>,
    pub locked_by: Option<String>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

/// Exponential backoff with full jitter: attempt `n` waits a uniform random time in
/// `[0, min(cap, base · 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(10 * 60),
        }
    }
}

impl Backoff {
    /// The longest delay after failed attempt `attempt` (1-based; lower counts as 1).
    pub fn ceiling(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 63) as u32;
        let factor = 1u64 << doublings;
        let micros = u64::try_from(self.base.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_mul(factor);
        Duration::from_micros(micros).min(self.cap)
    }

    /// A random delay in `[0, ceiling(attempt)]`, in whole microseconds.
    pub fn delay(&self, attempt: i32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`Backoff::delay`] with the caller's random source.
    pub fn delay_with(&self, attempt: i32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn backoff_ceiling_doubles_from_base_and_stops_at_cap() {
        let b = Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(5),
        };
        let ceilings: Vec<_> = (1..=6).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 5000, 5000].map(Duration::from_millis)
        );
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(i32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn backoff_delays_are_jittered_within_zero_and_the_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(3),
        };
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=10 {
            let delays: Vec<_> = (0..200).map(|_| b.delay_with(attempt, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= b.ceiling(attempt)));
            assert!(delays.iter().all(|d| d.subsec_nanos() % 1000 == 0));
            // Full jitter spreads over the whole range, not just near the ceiling.
            let half = b.ceiling(attempt) / 2;
            assert!(delays.iter().any(|d| *d < half) && delays.iter().any(|d| *d > half));
        }
    }
}
