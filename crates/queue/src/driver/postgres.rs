//! Postgres: lists as arrays (`UNNEST`), claims with `FOR UPDATE SKIP LOCKED` so that
//! workers on many hosts never wait for each other, wake-ups by `NOTIFY`.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use super::{Driver, apply_sql, claim_set, not_paused};
use crate::{ClaimedJob, Error, JobId, JobRef, JobState, NewJob, Timestamp, Transition, sql};

/// The `LISTEN`/`NOTIFY` channel of wake-ups; payload empty.
pub const NOTIFY_CHANNEL: &str = "visibuild_jobs";

pub struct Postgres;

impl Driver for Postgres {
    type Connection = PgConnection;

    async fn enqueue(c: &mut PgConnection, jobs: &[NewJob]) -> Result<Vec<JobId>, Error> {
        let q = sql!(
            "WITH inserted AS (
                 INSERT INTO jobs (kind, state, group_id, target_id, max_attempts, run_at)
                 SELECT kind, state, group_id, target_id, max_attempts, COALESCE(run_at, now())
                 FROM UNNEST($1::text[], $2::job_state[], $3::uuid[], $4::uuid[], $5::int4[],
                             $6::timestamptz[])
                      WITH ORDINALITY
                      AS u (kind, state, group_id, target_id, max_attempts, run_at, ord)
                 ORDER BY ord
                 RETURNING id
             )
             SELECT inserted.id
             FROM inserted CROSS JOIN (SELECT pg_notify($7, '')) AS notified
             ORDER BY inserted.id"
        );
        Ok(sqlx::query_scalar::<_, JobId>(q.postgres.as_str())
            .bind(jobs.iter().map(|j| j.kind).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.state).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.group).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.target).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
            .bind(
                jobs.iter()
                    .map(|j| j.run_at.map(|t| t.0))
                    .collect::<Vec<_>>(),
            )
            .bind(NOTIFY_CHANNEL)
            .fetch_all(c)
            .await?)
    }

    async fn claim(
        c: &mut PgConnection,
        group: Option<Uuid>,
        kinds: &[&str],
        limit: i64,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, Error> {
        // Two locking scans, each able to use its own partial index in order; CTEs are read
        // lazily, so `due` locks only as many rows as `expired` leaves room for.
        let q = sql!(concat!(
            "WITH expired AS (
                 SELECT id FROM jobs
                 WHERE state = 'running' AND locked_until < now()
                   AND kind = ANY($1) AND ($5::uuid IS NULL OR group_id = $5)
                   AND ",
            not_paused!(),
            "
                 ORDER BY locked_until, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ), due AS (
                 SELECT id FROM jobs
                 WHERE state = 'available' AND run_at <= now()
                   AND kind = ANY($1) AND ($5::uuid IS NULL OR group_id = $5)
                   AND ",
            not_paused!(),
            "
                 ORDER BY run_at, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ), picked AS (
                 SELECT id FROM expired UNION ALL SELECT id FROM due
                 LIMIT $2
             )
             UPDATE jobs ",
            claim_set!(),
            " FROM picked WHERE jobs.id = picked.id
             RETURNING jobs.id, kind, attempt, max_attempts, group_id, target_id"
        ));
        Ok(sqlx::query_as::<_, ClaimedJob>(q.postgres.as_str())
            .bind(kinds)
            .bind(limit)
            .bind(worker)
            .bind(micros(lease))
            .bind(group)
            .fetch_all(c)
            .await?)
    }

    async fn heartbeat(
        c: &mut PgConnection,
        jobs: &[JobRef],
        lease: Duration,
    ) -> Result<u64, Error> {
        let q = sql!(
            "UPDATE jobs AS j SET locked_until = {after $3}, updated_at = now()
             FROM UNNEST($1::int8[], $2::int4[]) AS r (id, attempt)
             WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running'"
        );
        let (ids, attempts): (Vec<i64>, Vec<i32>) =
            jobs.iter().map(|j| (j.id.0, j.attempt)).unzip();
        Ok(sqlx::query(q.postgres.as_str())
            .bind(ids)
            .bind(attempts)
            .bind(micros(lease))
            .execute(c)
            .await?
            .rows_affected())
    }

    async fn apply(
        c: &mut PgConnection,
        transitions: &[Transition],
    ) -> Result<Vec<(JobId, JobState, Timestamp)>, Error> {
        let q = sql!(apply_sql!(
            "FROM UNNEST($1::int8[], $2::int4[], $3::text[], $4::int8[], $5::text[],
                         $6::int4[], $7::bool[])
                  AS t (t_id, t_attempt, op, delay, note, attempts, blocked)"
        ));
        let rows: Vec<_> = transitions.iter().map(Transition::row).collect();
        Ok(sqlx::query_as(q.postgres.as_str())
            .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.attempt).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.op).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.delay_micros).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.note).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.attempts).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.blocked).collect::<Vec<_>>())
            .fetch_all(c)
            .await?)
    }

    async fn notify(c: &mut PgConnection) -> Result<(), Error> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(c)
            .await?;
        Ok(())
    }
}

pub(crate) fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}
