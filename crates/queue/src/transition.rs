//! A change of a job's state, as a value: built by a named constructor, applied — many at
//! once — by [`crate::apply`], the only writer of a job after it is enqueued. Transitions of
//! a claim are fenced by its attempt; those of a job nobody holds by the job's state.

use std::time::Duration;

use crate::{Backoff, JobId, JobRef, Timestamp};

/// Delays are capped here so `now + delay` can never overflow a timestamp.
const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Longer error texts are cut to this many characters before they are stored.
const MAX_ERROR_CHARS: usize = 4000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The claim's work is done.
    Complete(JobRef),
    /// The attempt failed but may succeed later: available again after `after` if attempts
    /// are left, failed otherwise. `error` becomes `last_error`.
    Retry {
        job: JobRef,
        after: Duration,
        error: String,
    },
    /// The attempt failed for good.
    Fail { job: JobRef, error: String },
    /// Not now (a rate limit, an outage): available again after `after`, without using up
    /// an attempt. `note`, when given, replaces `last_error`.
    Snooze {
        job: JobRef,
        after: Duration,
        note: Option<String>,
    },
    /// Given back unfinished (shutdown): available now, without using up an attempt.
    Release(JobRef),
    /// The claim cannot go on until something else happens: blocked, with at least one
    /// attempt left for when it is unblocked.
    Block { job: JobRef, note: String },
    /// A blocked job may run now.
    Unblock(JobId),
    /// An operator's retry of a job nobody holds (failed, completed or blocked): `attempts`
    /// more attempts from the one it is at, available now — or blocked, when it must wait
    /// again.
    Revive {
        job: JobId,
        attempts: i32,
        blocked: bool,
    },
    /// An operator's cancel of a job nobody holds (available or blocked): cancelled, never
    /// claimed again until revived.
    Cancel(JobId),
    /// The claim's work is no longer wanted (its job was cancelled while it was queued):
    /// cancelled, without using up the attempt.
    Abandon(JobRef),
}

impl Transition {
    pub fn complete(job: JobRef) -> Self {
        Transition::Complete(job)
    }

    /// Retry after the backoff's delay for this attempt.
    pub fn retry(job: JobRef, backoff: &Backoff, error: impl Into<String>) -> Self {
        Self::retry_after(job, backoff.delay(job.attempt), error)
    }

    /// Retry after a delay the server named (`Retry-After`, S3's `SlowDown`).
    pub fn retry_after(job: JobRef, after: Duration, error: impl Into<String>) -> Self {
        Transition::Retry {
            job,
            after,
            error: error.into(),
        }
    }

    pub fn fail(job: JobRef, error: impl Into<String>) -> Self {
        Transition::Fail {
            job,
            error: error.into(),
        }
    }

    pub fn snooze(job: JobRef, after: Duration, note: Option<&str>) -> Self {
        Transition::Snooze {
            job,
            after,
            note: note.map(str::to_string),
        }
    }

    pub fn release(job: JobRef) -> Self {
        Transition::Release(job)
    }

    pub fn block(job: JobRef, note: impl Into<String>) -> Self {
        Transition::Block {
            job,
            note: note.into(),
        }
    }

    pub fn unblock(job: JobId) -> Self {
        Transition::Unblock(job)
    }

    pub fn revive(job: JobId, attempts: i32, blocked: bool) -> Self {
        Transition::Revive {
            job,
            attempts,
            blocked,
        }
    }

    pub fn cancel(job: JobId) -> Self {
        Transition::Cancel(job)
    }

    pub fn abandon(job: JobRef) -> Self {
        Transition::Abandon(job)
    }

    pub fn job_id(&self) -> JobId {
        match self {
            Transition::Complete(job) | Transition::Release(job) | Transition::Abandon(job) => {
                job.id
            }
            Transition::Retry { job, .. }
            | Transition::Fail { job, .. }
            | Transition::Snooze { job, .. }
            | Transition::Block { job, .. } => job.id,
            Transition::Unblock(id)
            | Transition::Revive { job: id, .. }
            | Transition::Cancel(id) => *id,
        }
    }

    /// The claim this transition is fenced by, if it is a claim's.
    pub fn claim(&self) -> Option<JobRef> {
        match self {
            Transition::Complete(job) | Transition::Release(job) | Transition::Abandon(job) => {
                Some(*job)
            }
            Transition::Retry { job, .. }
            | Transition::Fail { job, .. }
            | Transition::Snooze { job, .. }
            | Transition::Block { job, .. } => Some(*job),
            Transition::Unblock(_) | Transition::Revive { .. } | Transition::Cancel(_) => None,
        }
    }

    /// The transition as one row of the drivers' statement.
    pub(crate) fn row(&self) -> Row<'_> {
        let (op, after, note, attempts, blocked) = match self {
            Transition::Complete(_) => ("complete", Duration::ZERO, None, 0, false),
            Transition::Retry { after, error, .. } => ("retry", *after, Some(error), 0, false),
            Transition::Fail { error, .. } => ("fail", Duration::ZERO, Some(error), 0, false),
            Transition::Snooze { after, note, .. } => ("snooze", *after, note.as_ref(), 0, false),
            Transition::Release(_) => ("release", Duration::ZERO, None, 0, false),
            Transition::Block { note, .. } => ("block", Duration::ZERO, Some(note), 0, false),
            Transition::Unblock(_) => ("unblock", Duration::ZERO, None, 0, false),
            Transition::Revive {
                attempts, blocked, ..
            } => ("revive", Duration::ZERO, None, *attempts, *blocked),
            Transition::Cancel(_) => ("cancel", Duration::ZERO, None, 0, false),
            Transition::Abandon(_) => ("abandon", Duration::ZERO, None, 0, false),
        };
        Row {
            id: self.job_id().0,
            attempt: self.claim().map_or(0, |j| j.attempt),
            op,
            delay_micros: after.min(MAX_DELAY).as_micros() as i64,
            note: note.map(|n| truncate(n)),
            attempts,
            blocked,
        }
    }
}

/// What [`crate::apply`] did with one transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Done,
    /// A retry: available again, not before `at`.
    Retrying { at: Timestamp },
    /// A retry with no attempts left, or a fail: failed (until an operator retries it).
    Failed,
    /// Not applied: the claim no longer holds the job, or the job is not in a state the
    /// transition applies to.
    Fenced,
}

/// One transition as the drivers bind it.
pub(crate) struct Row<'a> {
    pub id: i64,
    /// 0 for transitions not fenced by a claim.
    pub attempt: i32,
    pub op: &'static str,
    pub delay_micros: i64,
    pub note: Option<&'a str>,
    pub attempts: i32,
    pub blocked: bool,
}

pub(crate) fn truncate(error: &str) -> &str {
    match error.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => &error[..at],
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        assert_eq!(truncate(&long).chars().count(), MAX_ERROR_CHARS);
        assert_eq!(truncate("short"), "short");
    }
}
