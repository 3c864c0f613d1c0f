//! A durable job queue on Postgres (many hosts) or an embedded SQLite file (one host): jobs
//! are claimed under a lease, and every later write names the attempt that claimed it.
//!
//! Lifecycle: `blocked` → [`Transition::Unblock`] → `available` → [`claim`] → `running` →
//! a [`Transition`] (complete, retry after, snooze, fail, block, release), applied many at
//! once by [`apply`]. An operator's [`Transition::Cancel`] (or a claim's
//! [`Transition::Abandon`]) makes a job `cancelled` until [`Transition::Revive`]; a
//! [`pause`] of a group (or of all) makes claims skip its jobs until [`resume`]. A running
//! job whose lease has passed is claimable again with
//! `attempt + 1`: the old holder's transitions are then fenced out. `attempt` never
//! decreases; a transition that must not use up an attempt raises `max_attempts` instead.
//! The queue knows jobs only: a kind, an optional group (claims can be limited to one) and
//! an optional target (the thing the job works on, an id the queue does not interpret).
//!
//! Each store's dialect shows in one place: the [`driver`] module, one implementation of
//! [`driver::Driver`] per store. Callers pick pool or transaction through [`Ex`] / [`Conn`].
#![forbid(unsafe_code)]

pub mod budget;
pub mod driver;
mod error;
mod job;
mod list;
mod ops;
pub mod sql;
mod store;
mod timestamp;
mod transition;

pub use budget::{Budget, BudgetSettings, BudgetView, Joined};
pub use error::Error;
pub use job::{
    Backoff, ClaimedJob, DEFAULT_MAX_ATTEMPTS, JobId, JobRecord, JobRef, JobState, NewJob,
};
pub use list::List;
pub use ops::*;
pub use store::{Conn, Connection, Ex, Store, Tx};
pub use timestamp::Timestamp;
pub use transition::{Outcome, Transition};
