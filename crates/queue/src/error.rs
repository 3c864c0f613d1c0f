//! What the queue's operations can fail with.

use crate::JobId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write named a job and an attempt that no longer holds the job: its lease expired
    /// and another claimer took it over, or it already finished. The work must be dropped.
    #[error("job {job} attempt {attempt} no longer holds the job (lease lost or job finished)")]
    Fenced { job: JobId, attempt: i32 },
    #[error("invalid new job: {0}")]
    InvalidJob(&'static str),
    #[error("no rate budget named {0:?} (join it first)")]
    NoBudget(String),
    #[error("cannot migrate the queue's schema")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}
