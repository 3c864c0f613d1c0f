//! The job queue against a real Postgres: each test gets a fresh migrated database.
//! Covers exclusive claims, lease fencing, retries and backoff, reschedules, operator retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;
use visibuild_import::domain::{BatchId, JobId, JobKind, JobState, TicketId};
use visibuild_import::store::StoreError;
use visibuild_import::store::queue::{
    self, Backoff, ClaimedJob, FailOutcome, JobRecord, JobRef, NOTIFY_CHANNEL, NewJob,
    RetryDecision, RetryFilter,
};

const ALL_KINDS: &[JobKind] = JobKind::ALL;
const LEASE: Duration = Duration::from_secs(60);
const NO_BACKOFF: Backoff = Backoff {
    base: Duration::ZERO,
    cap: Duration::ZERO,
};

async fn enqueue_n(pool: &PgPool, n: usize, max_attempts: i32) -> Vec<JobId> {
    let jobs = vec![
        NewJob {
            max_attempts,
            ..NewJob::available(JobKind::Upload)
        };
        n
    ];
    queue::enqueue(pool, &jobs).await.unwrap()
}

async fn claim_all(pool: &PgPool) -> Vec<ClaimedJob> {
    queue::claim(pool, ALL_KINDS, 1000, "test-worker", LEASE)
        .await
        .unwrap()
}

async fn claim_one(pool: &PgPool) -> ClaimedJob {
    let mut jobs = queue::claim(pool, ALL_KINDS, 1, "test-worker", LEASE)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "expected one claimable job");
    jobs.pop().unwrap()
}

async fn record(pool: &PgPool, id: JobId) -> JobRecord {
    queue::job(pool, id).await.unwrap().expect("job exists")
}

/// Simulates a crashed holder: its lease ran out a minute ago.
async fn expire_leases(pool: &PgPool) {
    sqlx::query(
        "UPDATE jobs SET locked_until = now() - interval '1 minute' WHERE state = 'running'",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn insert_batch(pool: &PgPool) -> BatchId {
    let id = BatchId::new();
    sqlx::query(
        "INSERT INTO batches (id, name, manifest_path, files_root) VALUES ($1, $2, '', '')",
    )
    .bind(id)
    .bind(id.to_string())
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn insert_ticket(pool: &PgPool, batch: BatchId) -> TicketId {
    let id = TicketId::new();
    sqlx::query(
        "INSERT INTO tickets (id, batch_id, project_id, ref, line, title, fields_digest)
         VALUES ($1, $2, $3, $4, 2, 'Cracked tile', '')",
    )
    .bind(id)
    .bind(batch)
    .bind(Uuid::new_v4())
    .bind(id.to_string())
    .execute(pool)
    .await
    .unwrap();
    id
}

fn attempts_left(job: &JobRecord) -> i32 {
    job.max_attempts - job.attempt
}

#[sqlx::test]
async fn concurrent_claimers_process_every_job_exactly_once(
    pool_options: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    let pool = pool_options
        .max_connections(9)
        .connect_with(connect_options)
        .await
        .unwrap();
    let ids = enqueue_n(&pool, 2000, 3).await;
    assert_eq!(ids.len(), 2000);

    let seen: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..8 {
        let pool = pool.clone();
        let seen = seen.clone();
        workers.push(tokio::spawn(async move {
            let name = format!("worker-{w}");
            loop {
                let jobs = queue::claim(&pool, ALL_KINDS, 25, &name, LEASE)
                    .await
                    .unwrap();
                if jobs.is_empty() {
                    if !queue::has_unfinished(&pool, None).await.unwrap() {
                        return;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                {
                    let mut seen = seen.lock().unwrap();
                    for job in &jobs {
                        *seen.entry(job.id).or_default() += 1;
                    }
                }
                let refs: Vec<JobRef> = jobs.iter().map(ClaimedJob::job_ref).collect();
                // Alternate single and batched completion: both must fence correctly.
                if w % 2 == 0 {
                    assert!(queue::complete_many(&pool, &refs).await.unwrap().is_empty());
                } else {
                    for r in refs {
                        queue::complete(&pool, r).await.unwrap();
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        duplicates.is_empty(),
        "claimed more than once: {duplicates:?}"
    );
    assert_eq!(seen.len(), 2000);
    assert_eq!(
        queue::counts_by_state(&pool, None).await.unwrap(),
        vec![(JobKind::Upload, JobState::Completed, 2000)]
    );
}

#[sqlx::test]
async fn enqueue_returns_ids_in_order_and_blocked_jobs_are_not_claimed(pool: PgPool) {
    let jobs = [
        NewJob::available(JobKind::Upload),
        NewJob::blocked(JobKind::CreateTicket),
        NewJob::available(JobKind::CreateTicket),
    ];
    let ids = queue::enqueue(&pool, &jobs).await.unwrap();
    for (id, job) in ids.iter().zip(&jobs) {
        let r = record(&pool, *id).await;
        assert_eq!((r.kind, r.state, r.attempt), (job.kind, job.state, 0));
    }

    let claimed = claim_all(&pool).await;
    let mut claimed_ids: Vec<_> = claimed.iter().map(|j| j.id).collect();
    claimed_ids.sort();
    assert_eq!(claimed_ids, vec![ids[0], ids[2]]);
    assert!(
        claimed
            .iter()
            .all(|j| j.attempt == 1 && !j.is_over_budget())
    );

    let only_uploads = queue::claim(&pool, &[JobKind::Upload], 10, "w", LEASE)
        .await
        .unwrap();
    assert!(
        only_uploads.is_empty(),
        "running jobs under lease are not claimable"
    );
}

#[sqlx::test]
async fn enqueue_refuses_jobs_that_do_not_start_available_or_blocked(pool: PgPool) {
    let bad = NewJob {
        state: JobState::Running,
        ..NewJob::available(JobKind::Upload)
    };
    let err = queue::enqueue(&pool, &[bad]).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidJob(_)), "{err:?}");
    assert!(!queue::has_unfinished(&pool, None).await.unwrap());
}

#[sqlx::test]
async fn claims_are_limited_to_the_kinds_and_batch_asked_for(pool: PgPool) {
    let batch = insert_batch(&pool).await;
    let in_batch = |kind| NewJob {
        batch_id: Some(batch),
        ..NewJob::available(kind)
    };
    let ids = queue::enqueue(
        &pool,
        &[
            in_batch(JobKind::Upload),
            in_batch(JobKind::CreateTicket),
            NewJob::available(JobKind::Upload),
        ],
    )
    .await
    .unwrap();

    let got = queue::claim_in(&pool, Some(batch), &[JobKind::Upload], 10, "w", LEASE)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[0]]);
    assert_eq!(got[0].batch_id, Some(batch));

    let got = queue::claim_in(&pool, Some(batch), ALL_KINDS, 10, "w", LEASE)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[1]]);

    assert!(queue::has_unfinished(&pool, Some(batch)).await.unwrap());
    assert_eq!(
        queue::counts_by_state(&pool, Some(batch)).await.unwrap(),
        vec![
            (JobKind::Upload, JobState::Running, 1),
            (JobKind::CreateTicket, JobState::Running, 1),
        ]
    );
}

#[sqlx::test]
async fn an_expired_lease_is_reclaimed_and_the_old_holder_is_fenced_out(pool: PgPool) {
    let [id] = enqueue_n(&pool, 1, 5).await[..] else {
        unreachable!()
    };
    let first = claim_one(&pool).await;
    assert_eq!((first.id, first.attempt), (id, 1));

    expire_leases(&pool).await;
    let second = claim_one(&pool).await;
    assert_eq!((second.id, second.attempt), (id, 2));

    let old = first.job_ref();
    let err = queue::complete(&pool, old).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { job, attempt: 1 } if job == id),
        "{err:?}"
    );
    assert!(matches!(
        queue::fail(&pool, old, "late", RetryDecision::Retry, &NO_BACKOFF).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        queue::reschedule(&pool, old, Duration::ZERO, None).await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(queue::heartbeat(&pool, &[old], LEASE).await.unwrap(), 0);
    assert_eq!(queue::release(&pool, &[old]).await.unwrap(), 0);
    assert_eq!(
        queue::complete_many(&pool, &[old]).await.unwrap(),
        vec![old]
    );

    let r = record(&pool, id).await;
    assert_eq!((r.state, r.attempt), (JobState::Running, 2));

    queue::complete(&pool, second.job_ref()).await.unwrap();
    let r = record(&pool, id).await;
    assert_eq!(r.state, JobState::Completed);
    assert!(r.finished_at.is_some() && r.locked_until.is_none() && r.locked_by.is_none());
    assert!(matches!(
        queue::complete(&pool, second.job_ref()).await,
        Err(StoreError::Fenced { attempt: 2, .. })
    ));
}

#[sqlx::test]
async fn a_lease_lost_on_the_last_attempt_is_claimed_over_budget(pool: PgPool) {
    enqueue_n(&pool, 1, 1).await;
    assert!(!claim_one(&pool).await.is_over_budget());
    expire_leases(&pool).await;
    let again = claim_one(&pool).await;
    assert!(again.is_over_budget());
    // The worker fails it instead of running it: no attempts left, so it fails for good.
    let outcome = queue::fail(
        &pool,
        again.job_ref(),
        "lease lost on the last attempt",
        RetryDecision::Retry,
        &NO_BACKOFF,
    )
    .await
    .unwrap();
    assert_eq!(outcome, FailOutcome::Failed);
}

#[sqlx::test]
async fn a_retryable_failure_waits_a_backoff_then_fails_when_attempts_run_out(pool: PgPool) {
    let [id] = enqueue_n(&pool, 1, 3).await[..] else {
        unreachable!()
    };
    // A huge base makes the jittered delay nonzero in practice, so the job is not due yet.
    let slow = Backoff {
        base: Duration::from_secs(365 * 24 * 3600),
        cap: Duration::from_secs(365 * 24 * 3600),
    };
    let job = claim_one(&pool).await;
    let outcome = queue::fail(
        &pool,
        job.job_ref(),
        "HTTP 503",
        RetryDecision::Retry,
        &slow,
    )
    .await
    .unwrap();
    let r = record(&pool, id).await;
    let FailOutcome::Retrying { at } = outcome else {
        panic!("expected a retry, got {outcome:?}")
    };
    assert_eq!(at, r.run_at);
    assert!(r.run_at > r.updated_at && r.run_at <= r.updated_at + slow.ceiling(1));
    assert_eq!(r.state, JobState::Available);
    assert_eq!(r.last_error.as_deref(), Some("HTTP 503"));
    assert!(r.locked_by.is_none() && r.locked_until.is_none());
    assert!(
        claim_all(&pool).await.is_empty(),
        "not due before its backoff"
    );
    assert_eq!(
        queue::next_run_at(&pool, None).await.unwrap(),
        Some(r.run_at)
    );

    // Make it due and use up the remaining attempts.
    sqlx::query("UPDATE jobs SET run_at = now() WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let job = claim_one(&pool).await;
    let outcome = queue::fail(
        &pool,
        job.job_ref(),
        "HTTP 500",
        RetryDecision::Retry,
        &NO_BACKOFF,
    )
    .await
    .unwrap();
    assert!(matches!(outcome, FailOutcome::Retrying { .. }));
    let job = claim_one(&pool).await;
    assert_eq!(job.attempt, 3);
    let outcome = queue::fail(
        &pool,
        job.job_ref(),
        "HTTP 502",
        RetryDecision::Retry,
        &NO_BACKOFF,
    )
    .await
    .unwrap();
    assert_eq!(outcome, FailOutcome::Failed);

    let r = record(&pool, id).await;
    assert_eq!((r.state, r.attempt), (JobState::Failed, 3));
    assert_eq!(r.last_error.as_deref(), Some("HTTP 502"));
    assert!(r.finished_at.is_some());
    assert!(!queue::has_unfinished(&pool, None).await.unwrap());
    assert_eq!(queue::next_run_at(&pool, None).await.unwrap(), None);
}

#[sqlx::test]
async fn a_permanent_failure_fails_at_once(pool: PgPool) {
    let [id] = enqueue_n(&pool, 1, 8).await[..] else {
        unreachable!()
    };
    let job = claim_one(&pool).await;
    let outcome = queue::fail(
        &pool,
        job.job_ref(),
        "422 attachment belongs to another company",
        RetryDecision::Permanent,
        &Backoff::default(),
    )
    .await
    .unwrap();
    assert_eq!(outcome, FailOutcome::Failed);
    let r = record(&pool, id).await;
    assert_eq!((r.state, r.attempt), (JobState::Failed, 1));
    assert_eq!(
        r.last_error.as_deref(),
        Some("422 attachment belongs to another company")
    );
}

#[sqlx::test]
async fn reschedules_keep_the_attempt_budget_however_many_there_are(pool: PgPool) {
    let [id] = enqueue_n(&pool, 1, 2).await[..] else {
        unreachable!()
    };
    for n in 1..=5 {
        let job = claim_one(&pool).await;
        assert_eq!(job.attempt, n, "attempt keeps growing: it is the fence");
        queue::reschedule(&pool, job.job_ref(), Duration::ZERO, Some("rate limited"))
            .await
            .unwrap();
        let r = record(&pool, id).await;
        assert_eq!(r.state, JobState::Available);
        assert_eq!(attempts_left(&r), 2, "a reschedule uses no attempt");
        assert_eq!(r.last_error.as_deref(), Some("rate limited"));
    }

    // The budget is intact: a real failure still retries once, then fails.
    let job = claim_one(&pool).await;
    let outcome = queue::fail(
        &pool,
        job.job_ref(),
        "timeout",
        RetryDecision::Retry,
        &NO_BACKOFF,
    )
    .await
    .unwrap();
    assert!(matches!(outcome, FailOutcome::Retrying { .. }));

    let job = claim_one(&pool).await;
    let at = queue::reschedule(&pool, job.job_ref(), Duration::from_secs(3600), None)
        .await
        .unwrap();
    let r = record(&pool, id).await;
    assert_eq!(at, r.run_at);
    assert_eq!(r.run_at, r.updated_at + Duration::from_secs(3600));
    assert_eq!(
        r.last_error.as_deref(),
        Some("timeout"),
        "no note keeps the error"
    );
    assert!(claim_all(&pool).await.is_empty());
}

#[sqlx::test]
async fn operator_retry_restores_failed_jobs_matching_the_filter(pool: PgPool) {
    let batch = insert_batch(&pool).await;
    let ticket = insert_ticket(&pool, batch).await;
    let with = |batch_id, ticket_id| NewJob {
        batch_id,
        ticket_id,
        max_attempts: 1,
        ..NewJob::available(JobKind::Upload)
    };
    let ids = queue::enqueue(
        &pool,
        &[
            with(Some(batch), None),
            with(Some(batch), Some(ticket)),
            with(None, None),
            with(None, None),
            with(Some(batch), None),
        ],
    )
    .await
    .unwrap();
    let errors = [
        "connect timeout to S3",
        "422 attachment key not found",
        "Timeout",
        "HTTP 500",
    ];
    let mut claimed = claim_all(&pool).await;
    claimed.sort_by_key(|j| j.id);
    for (job, error) in claimed.iter().zip(errors) {
        queue::fail(
            &pool,
            job.job_ref(),
            error,
            RetryDecision::Retry,
            &NO_BACKOFF,
        )
        .await
        .unwrap();
    }
    queue::complete(&pool, claimed[4].job_ref()).await.unwrap();

    let retry = |filter: RetryFilter| {
        let pool = pool.clone();
        async move { queue::retry_failed(&pool, &filter).await.unwrap() }
    };
    assert_eq!(
        retry(RetryFilter {
            job: Some(ids[3]),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        retry(RetryFilter {
            batch: Some(batch),
            error_contains: Some("TIMEOUT".into()),
            ..Default::default()
        })
        .await,
        1,
        "only the batch's timeout, not the batchless one"
    );
    assert_eq!(record(&pool, ids[0]).await.state, JobState::Available);
    assert_eq!(record(&pool, ids[2]).await.state, JobState::Failed);
    assert_eq!(
        retry(RetryFilter {
            ticket: Some(ticket),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(retry(RetryFilter::default()).await, 1);
    assert_eq!(retry(RetryFilter::default()).await, 0);

    for id in &ids[..4] {
        let r = record(&pool, *id).await;
        assert_eq!(r.state, JobState::Available);
        assert_eq!(attempts_left(&r), queue::DEFAULT_MAX_ATTEMPTS);
        assert!(
            r.last_error.is_some(),
            "the error stays until the next outcome"
        );
        assert!(r.finished_at.is_none());
    }
    assert_eq!(record(&pool, ids[4]).await.state, JobState::Completed);
    assert_eq!(claim_all(&pool).await.len(), 4);
}

#[sqlx::test]
async fn heartbeats_extend_the_lease_and_release_gives_jobs_back(pool: PgPool) {
    enqueue_n(&pool, 3, 4).await;
    let jobs = claim_all(&pool).await;
    let refs: Vec<JobRef> = jobs.iter().map(ClaimedJob::job_ref).collect();
    let before = record(&pool, refs[0].id).await;

    let day = Duration::from_secs(24 * 3600);
    assert_eq!(queue::heartbeat(&pool, &refs, day).await.unwrap(), 3);
    let after = record(&pool, refs[0].id).await;
    assert_eq!(after.locked_until, Some(after.updated_at + day));
    assert!(after.locked_until > before.locked_until);
    assert_eq!(after.locked_by.as_deref(), Some("test-worker"));

    assert_eq!(queue::release(&pool, &refs[..2]).await.unwrap(), 2);
    for r in &refs[..2] {
        let rec = record(&pool, r.id).await;
        assert_eq!(rec.state, JobState::Available);
        assert_eq!(attempts_left(&rec), 4, "release uses no attempt");
        assert!(rec.locked_by.is_none() && rec.locked_until.is_none());
    }
    assert_eq!(queue::heartbeat(&pool, &refs, day).await.unwrap(), 1);

    let again = claim_all(&pool).await;
    let mut again_ids: Vec<_> = again.iter().map(|j| j.id).collect();
    again_ids.sort();
    assert_eq!(again_ids, vec![refs[0].id, refs[1].id]);
    assert!(again.iter().all(|j| j.attempt == 2));
}

#[sqlx::test]
async fn next_run_at_reports_when_work_is_due_and_blocked_jobs_count_as_unfinished(pool: PgPool) {
    assert_eq!(queue::next_run_at(&pool, None).await.unwrap(), None);
    assert!(!queue::has_unfinished(&pool, None).await.unwrap());

    queue::enqueue(&pool, &[NewJob::blocked(JobKind::CreateTicket)])
        .await
        .unwrap();
    assert_eq!(queue::next_run_at(&pool, None).await.unwrap(), None);
    assert!(queue::has_unfinished(&pool, None).await.unwrap());

    let later =
        OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + Duration::from_secs(7200);
    let sooner = later - Duration::from_secs(3600);
    queue::enqueue(
        &pool,
        &[
            NewJob {
                run_at: Some(later),
                ..NewJob::available(JobKind::Upload)
            },
            NewJob {
                run_at: Some(sooner),
                ..NewJob::available(JobKind::Upload)
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(queue::next_run_at(&pool, None).await.unwrap(), Some(sooner));
    assert!(claim_all(&pool).await.is_empty());
}

#[sqlx::test]
async fn enqueue_notifies_listeners(pool: PgPool) {
    let mut listener = queue::listen(&pool).await.unwrap();
    enqueue_n(&pool, 2, 1).await;
    // Bounded only so a broken NOTIFY fails the test instead of hanging it.
    let note = tokio::time::timeout(Duration::from_secs(30), listener.recv())
        .await
        .expect("a notification after enqueue")
        .unwrap();
    assert_eq!(note.channel(), NOTIFY_CHANNEL);
}

#[tokio::test]
async fn connect_creates_and_migrates_a_missing_database_and_reconnects_to_it() {
    use sqlx::migrate::MigrateDatabase;
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (set in .cargo/config.toml)");
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&format!(
        "/visibuild_import_connect_{}",
        Uuid::new_v4().simple()
    ));
    let url = url.to_string();

    let pool = visibuild_import::store::connect_with(&url, 2)
        .await
        .unwrap();
    assert!(!queue::has_unfinished(&pool, None).await.unwrap());
    queue::enqueue(&pool, &[NewJob::available(JobKind::Upload)])
        .await
        .unwrap();
    pool.close().await;

    let pool = visibuild_import::store::connect(&url).await.unwrap();
    assert!(
        queue::has_unfinished(&pool, None).await.unwrap(),
        "same database, kept"
    );
    pool.close().await;
    sqlx::Postgres::drop_database(&url).await.unwrap();
}
