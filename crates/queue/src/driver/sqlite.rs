//! SQLite: one writer at a time (every transaction takes the write lock when it begins), so a
//! claim is one `UPDATE … WHERE id IN (…) RETURNING` with nothing to skip; lists travel as
//! JSON; wake-ups reach the workers of this process only — other processes on the host find
//! new work when they poll.

use std::fmt::Write;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::SqliteConnection;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Driver, apply_sql, claim_set, not_paused};
use crate::driver::postgres::micros;
use crate::{ClaimedJob, Error, JobId, JobRef, JobState, List, NewJob, Timestamp, Transition, sql};

/// Wake-ups of this process's idle workers.
pub(crate) static LOCAL_WAKEUPS: LazyLock<Notify> = LazyLock::new(Notify::new);

pub struct Sqlite;

impl Driver for Sqlite {
    type Connection = SqliteConnection;

    async fn enqueue(c: &mut SqliteConnection, jobs: &[NewJob]) -> Result<Vec<JobId>, Error> {
        let q = sql!(
            "INSERT INTO jobs (kind, state, group_id, target_id, max_attempts, run_at)
             SELECT value ->> 0, value ->> 1, unhex(value ->> 2), unhex(value ->> 3),
                    value ->> 4, COALESCE(value ->> 5, {now})
             FROM json_each($1) ORDER BY key
             RETURNING id"
        );
        let mut json = String::from("[");
        for (i, job) in jobs.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            let hex =
                |id: Option<Uuid>| id.map_or("null".to_string(), |u| format!("\"{}\"", u.simple()));
            let run_at = job
                .run_at
                .map_or("null".to_string(), |t| t.unix_micros().to_string());
            let mut kind = String::new();
            crate::list::JsonItem::write_json(&job.kind, &mut kind);
            let _ = write!(
                json,
                "[{kind},\"{}\",{},{},{},{run_at}]",
                job.state.as_str(),
                hex(job.group),
                hex(job.target),
                job.max_attempts,
            );
        }
        json.push(']');
        let mut ids: Vec<JobId> = sqlx::query_scalar(q.sqlite.as_str())
            .bind(json)
            .fetch_all(&mut *c)
            .await?;
        // Inserted in the order of `jobs`, so ids grow in that order.
        ids.sort();
        LOCAL_WAKEUPS.notify_waiters();
        Ok(ids)
    }

    async fn claim(
        c: &mut SqliteConnection,
        group: Option<Uuid>,
        kinds: &[&str],
        limit: i64,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, Error> {
        let q = sql!(concat!(
            "UPDATE jobs ",
            claim_set!(),
            " WHERE id IN (
                 SELECT id FROM (
                     SELECT id FROM jobs
                     WHERE state = 'running' AND locked_until < {now}
                       AND kind IN (SELECT value FROM json_each($1))
                       AND ($5 IS NULL OR group_id = $5)
                   AND ",
            not_paused!(),
            "
                     ORDER BY locked_until, id LIMIT $2)
                 UNION ALL
                 SELECT id FROM (
                     SELECT id FROM jobs
                     WHERE state = 'available' AND run_at <= {now}
                       AND kind IN (SELECT value FROM json_each($1))
                       AND ($5 IS NULL OR group_id = $5)
                   AND ",
            not_paused!(),
            "
                     ORDER BY run_at, id LIMIT $2)
                 LIMIT $2)
             RETURNING id, kind, attempt, max_attempts, group_id, target_id"
        ));
        let mut jobs: Vec<ClaimedJob> = sqlx::query_as(q.sqlite.as_str())
            .bind(List(kinds))
            .bind(limit)
            .bind(worker)
            .bind(micros(lease))
            .bind(group)
            .fetch_all(c)
            .await?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn heartbeat(
        c: &mut SqliteConnection,
        jobs: &[JobRef],
        lease: Duration,
    ) -> Result<u64, Error> {
        let q = sql!(
            "UPDATE jobs SET locked_until = {after $2}, updated_at = {now}
             WHERE state = 'running'
               AND (id, attempt) IN (SELECT value ->> 0, value ->> 1 FROM json_each($1))"
        );
        let mut json = String::from("[");
        for (i, j) in jobs.iter().enumerate() {
            let _ = write!(
                json,
                "{}[{},{}]",
                if i > 0 { "," } else { "" },
                j.id,
                j.attempt
            );
        }
        json.push(']');
        Ok(sqlx::query(q.sqlite.as_str())
            .bind(json)
            .bind(micros(lease))
            .execute(c)
            .await?
            .rows_affected())
    }

    async fn apply(
        c: &mut SqliteConnection,
        transitions: &[Transition],
    ) -> Result<Vec<(JobId, JobState, Timestamp)>, Error> {
        // One statement per transition, inside the caller's transaction: SQLite runs them
        // in-process, with no round trip to batch away.
        let q = sql!(apply_sql!(
            "FROM (SELECT $1 AS t_id, $2 AS t_attempt, $3 AS op, $4 AS delay, $5 AS note,
                          $6 AS attempts, $7 AS blocked) AS t"
        ));
        let mut changed = Vec::with_capacity(transitions.len());
        for t in transitions {
            let r = t.row();
            let row: Option<(JobId, JobState, Timestamp)> = sqlx::query_as(q.sqlite.as_str())
                .bind(r.id)
                .bind(r.attempt)
                .bind(r.op)
                .bind(r.delay_micros)
                .bind(r.note)
                .bind(r.attempts)
                .bind(r.blocked)
                .fetch_optional(&mut *c)
                .await?;
            changed.extend(row);
        }
        Ok(changed)
    }

    async fn notify(_: &mut SqliteConnection) -> Result<(), Error> {
        LOCAL_WAKEUPS.notify_waiters();
        Ok(())
    }
}
