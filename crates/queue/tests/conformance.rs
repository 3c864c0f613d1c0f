//! The queue's conformance suite: every test runs against both drivers, on a real store — a
//! fresh Postgres database (`DATABASE_URL`'s server, default the local one) and a fresh
//! SQLite file.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;
use visibuild_queue::{
    self as queue, Error, JobId, JobRef, JobState, NewJob, Outcome, Store, Transition,
};

const LEASE: Duration = Duration::from_secs(60);

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A store made for one test, removed after it.
struct Fresh {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    database: Option<String>,
}

impl Fresh {
    async fn postgres() -> Fresh {
        let name = format!("queue_test_{}", Uuid::new_v4().simple());
        let server = server_url();
        let mut admin = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("the conformance suite needs Postgres at {server}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut url = url_with_database(&server, &name);
        url.push_str("");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .unwrap();
        let store = Store::Postgres(pool);
        store.migrate().await.unwrap();
        Fresh {
            store,
            _dir: None,
            database: Some(name),
        }
    }

    async fn sqlite() -> Fresh {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("queue.db"), 8)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Fresh {
            store,
            _dir: Some(dir),
            database: None,
        }
    }

    async fn done(self) {
        self.store.close().await;
        if let Some(name) = self.database {
            let mut admin = PgConnection::connect(&server_url()).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .unwrap();
        }
    }
}

fn url_with_database(server: &str, name: &str) -> String {
    let mut url = url::Url::parse(server).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// One test body, run as two tests: on Postgres and on SQLite.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let fresh = super::Fresh::postgres().await;
                super::$name(&fresh.store).await;
                fresh.done().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let fresh = super::Fresh::sqlite().await;
                super::$name(&fresh.store).await;
                fresh.done().await;
            }
        }
    };
}

async fn enqueue(store: &Store, jobs: &[NewJob]) -> Vec<JobId> {
    queue::enqueue(store, jobs).await.unwrap()
}

async fn claim(store: &Store, kind: &str, limit: i64, worker: &str) -> Vec<queue::ClaimedJob> {
    queue::claim(store, None, &[kind], limit, worker, LEASE)
        .await
        .unwrap()
}

async fn state(store: &Store, id: JobId) -> JobState {
    queue::job(store, id).await.unwrap().unwrap().state
}

on_both!(claims_take_jobs_in_order_and_count_attempts);
async fn claims_take_jobs_in_order_and_count_attempts(store: &Store) {
    let target = Uuid::new_v4();
    let group = Uuid::new_v4();
    let ids = enqueue(
        store,
        &[
            NewJob {
                group: Some(group),
                target: Some(target),
                ..NewJob::available("a")
            },
            NewJob::available("a"),
            NewJob::available("b"),
            NewJob::blocked("a"),
        ],
    )
    .await;
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");

    let got = claim(store, "a", 10, "w1").await;
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[..2].to_vec()
    );
    assert_eq!(got[0].attempt, 1);
    assert_eq!(got[0].kind, "a");
    assert_eq!(got[0].group_id, Some(group));
    assert_eq!(got[0].target_id, Some(target));
    // Nothing more of kind a: the third is blocked, the others are held.
    assert!(claim(store, "a", 10, "w2").await.is_empty());
    // A group limits the claim.
    let other = queue::claim(store, Some(Uuid::new_v4()), &["b"], 10, "w", LEASE)
        .await
        .unwrap();
    assert!(other.is_empty());
    let record = queue::job(store, ids[0]).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Running);
    assert_eq!(record.locked_by.as_deref(), Some("w1"));
    assert!(record.locked_until.unwrap() > record.updated_at);
    let counts = queue::counts_by_state(store, None).await.unwrap();
    assert!(
        counts.contains(&("a".into(), JobState::Running, 2)),
        "{counts:?}"
    );
    assert!(
        counts.contains(&("a".into(), JobState::Blocked, 1)),
        "{counts:?}"
    );
    assert!(
        counts.contains(&("b".into(), JobState::Available, 1)),
        "{counts:?}"
    );
}

on_both!(new_jobs_must_be_available_or_blocked);
async fn new_jobs_must_be_available_or_blocked(store: &Store) {
    let bad = NewJob {
        state: JobState::Running,
        ..NewJob::available("a")
    };
    assert!(matches!(
        queue::enqueue(store, &[bad]).await,
        Err(Error::InvalidJob(_))
    ));
    let bad = NewJob {
        max_attempts: 0,
        ..NewJob::available("a")
    };
    assert!(matches!(
        queue::enqueue(store, &[bad]).await,
        Err(Error::InvalidJob(_))
    ));
}

on_both!(concurrent_claims_never_overlap);
async fn concurrent_claims_never_overlap(store: &Store) {
    let jobs: Vec<_> = (0..400).map(|_| NewJob::available("a")).collect();
    let ids = enqueue(store, &jobs).await;
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = queue::claim(&store, None, &["a"], 7, &format!("w{w}"), LEASE)
                    .await
                    .unwrap();
                if got.is_empty() {
                    break mine;
                }
                let done: Vec<_> = got
                    .iter()
                    .map(|j| Transition::complete(j.job_ref()))
                    .collect();
                let outcomes = queue::apply(&store, &done).await.unwrap();
                assert!(outcomes.iter().all(|o| *o == Outcome::Done));
                mine.extend(got.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "job {id} was claimed twice");
        }
    }
    assert_eq!(seen, ids.into_iter().collect::<HashSet<_>>());
    assert!(!queue::has_unfinished(store, None).await.unwrap());
}

on_both!(a_lost_lease_fences_out_the_old_claim);
async fn a_lost_lease_fences_out_the_old_claim(store: &Store) {
    let [id] = enqueue(store, &[NewJob::available("a")]).await[..] else {
        panic!()
    };
    let first = claim(store, "a", 1, "dead").await.remove(0);
    assert_eq!(
        queue::holders(store).await.unwrap(),
        vec!["dead".to_string()]
    );
    assert_eq!(queue::expire_leases_of(store, "dead").await.unwrap(), 1);
    let second = claim(store, "a", 1, "alive").await.remove(0);
    assert_eq!((second.id, second.attempt), (id, 2));
    // Every write of the first claim is refused now.
    let err = queue::apply_one(store, Transition::complete(first.job_ref()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Fenced { attempt: 1, .. }), "{err}");
    assert_eq!(
        queue::heartbeat(store, &[first.job_ref()], LEASE)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        queue::heartbeat(store, &[second.job_ref()], LEASE)
            .await
            .unwrap(),
        1
    );
    let mut tx = store.begin().await.unwrap();
    assert!(queue::hold(&mut tx, first.job_ref()).await.is_err());
    queue::hold(&mut tx, second.job_ref()).await.unwrap();
    tx.commit().await.unwrap();
    queue::apply_one(store, Transition::complete(second.job_ref()))
        .await
        .unwrap();
    assert_eq!(state(store, id).await, JobState::Completed);
    // A finished job is not completed twice.
    let again = queue::apply(store, &[Transition::complete(second.job_ref())])
        .await
        .unwrap();
    assert_eq!(again, vec![Outcome::Fenced]);
}

on_both!(retries_use_attempts_and_then_fail);
async fn retries_use_attempts_and_then_fail(store: &Store) {
    let [id] = enqueue(
        store,
        &[NewJob {
            max_attempts: 2,
            ..NewJob::available("a")
        }],
    )
    .await[..] else {
        panic!()
    };
    let job = claim(store, "a", 1, "w").await.remove(0);
    let outcome = queue::apply_one(
        store,
        Transition::retry_after(job.job_ref(), Duration::ZERO, "boom 1"),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Retrying { .. }), "{outcome:?}");
    let record = queue::job(store, id).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.last_error.as_deref()),
        (JobState::Available, Some("boom 1"))
    );
    assert_eq!(record.locked_by, None);
    let job = claim(store, "a", 1, "w").await.remove(0);
    assert_eq!(job.attempt, 2);
    let outcome = queue::apply_one(
        store,
        Transition::retry_after(job.job_ref(), Duration::ZERO, "boom 2"),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Failed);
    let record = queue::job(store, id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Failed);
    assert!(record.finished_at.is_some());
    assert!(claim(store, "a", 1, "w").await.is_empty());
    // An operator's retry gives it attempts again.
    queue::apply_one(store, Transition::revive(id, 8, false))
        .await
        .unwrap();
    let job = claim(store, "a", 1, "w").await.remove(0);
    assert_eq!((job.attempt, job.max_attempts), (3, 10));
    // A permanent failure fails at once, attempts left or not.
    let outcome = queue::apply_one(store, Transition::fail(job.job_ref(), "no"))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Failed);
}

on_both!(snoozes_and_releases_keep_the_attempts);
async fn snoozes_and_releases_keep_the_attempts(store: &Store) {
    let [id] = enqueue(
        store,
        &[NewJob {
            max_attempts: 1,
            ..NewJob::available("a")
        }],
    )
    .await[..] else {
        panic!()
    };
    let job = claim(store, "a", 1, "w").await.remove(0);
    queue::apply_one(
        store,
        Transition::snooze(job.job_ref(), Duration::from_secs(3600), Some("429")),
    )
    .await
    .unwrap();
    let record = queue::job(store, id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Available);
    assert_eq!(record.max_attempts, 2);
    assert_eq!(record.last_error.as_deref(), Some("429"));
    // Not before its time.
    assert!(claim(store, "a", 1, "w").await.is_empty());
    let next = queue::next_run_at(store, None).await.unwrap().unwrap();
    assert!(next.0 > record.updated_at.0 + Duration::from_secs(3500));
    assert!(queue::has_runnable(store, None).await.unwrap());
    assert!(queue::has_available(store, None).await.unwrap());
}

on_both!(release_gives_jobs_back_at_once);
async fn release_gives_jobs_back_at_once(store: &Store) {
    enqueue(store, &[NewJob::available("a"), NewJob::available("a")]).await;
    let held = claim(store, "a", 2, "w").await;
    let refs: Vec<_> = held
        .iter()
        .map(|j| Transition::release(j.job_ref()))
        .collect();
    assert_eq!(
        queue::apply(store, &refs).await.unwrap(),
        vec![Outcome::Done; 2]
    );
    let again = claim(store, "a", 2, "w").await;
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|j| j.attempt == 2 && j.max_attempts == 9));
}

on_both!(block_and_unblock_wait_for_something_outside);
async fn block_and_unblock_wait_for_something_outside(store: &Store) {
    let [id] = enqueue(store, &[NewJob::blocked("b")]).await[..] else {
        panic!()
    };
    assert!(claim(store, "b", 1, "w").await.is_empty());
    assert!(!queue::has_runnable(store, None).await.unwrap());
    assert!(queue::has_unfinished(store, None).await.unwrap());
    assert_eq!(queue::next_run_at(store, None).await.unwrap(), None);
    queue::apply_one(store, Transition::unblock(id))
        .await
        .unwrap();
    // Unblocking twice is refused: it is not blocked any more.
    assert_eq!(
        queue::apply(store, &[Transition::unblock(id)])
            .await
            .unwrap(),
        vec![Outcome::Fenced]
    );
    let job = claim(store, "b", 1, "w").await.remove(0);
    queue::apply_one(store, Transition::block(job.job_ref(), "waiting again"))
        .await
        .unwrap();
    let record = queue::job(store, id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Blocked);
    assert_eq!(record.last_error.as_deref(), Some("waiting again"));
    assert!(record.max_attempts > record.attempt);
    // Revive can leave it blocked (its wait is not over) with fresh attempts.
    queue::apply_one(store, Transition::revive(id, 8, true))
        .await
        .unwrap();
    assert_eq!(state(store, id).await, JobState::Blocked);
}

on_both!(one_apply_settles_many_jobs_each_fenced_on_its_own);
async fn one_apply_settles_many_jobs_each_fenced_on_its_own(store: &Store) {
    let ids = enqueue(
        store,
        &(0..5).map(|_| NewJob::available("a")).collect::<Vec<_>>(),
    )
    .await;
    let blocked = enqueue(store, &[NewJob::blocked("b")]).await[0];
    let held = claim(store, "a", 5, "w").await;
    let stale = JobRef {
        id: held[4].id,
        attempt: 99,
    };
    let outcomes = queue::apply(
        store,
        &[
            Transition::complete(held[0].job_ref()),
            Transition::retry_after(held[1].job_ref(), Duration::ZERO, "again"),
            Transition::fail(held[2].job_ref(), "broken"),
            Transition::snooze(held[3].job_ref(), Duration::ZERO, None),
            Transition::complete(stale),
            Transition::unblock(blocked),
        ],
    )
    .await
    .unwrap();
    assert_eq!(outcomes[0], Outcome::Done);
    assert!(matches!(outcomes[1], Outcome::Retrying { .. }));
    assert_eq!(outcomes[2], Outcome::Failed);
    assert_eq!(outcomes[3], Outcome::Done);
    assert_eq!(outcomes[4], Outcome::Fenced);
    assert_eq!(outcomes[5], Outcome::Done);
    let states = [
        JobState::Completed,
        JobState::Available,
        JobState::Failed,
        JobState::Available,
        JobState::Running,
    ];
    for (id, want) in ids.iter().zip(states) {
        assert_eq!(state(store, *id).await, want, "job {id}");
    }
    assert_eq!(state(store, blocked).await, JobState::Available);
    let dup = [
        Transition::complete(held[0].job_ref()),
        Transition::release(held[0].job_ref()),
    ];
    assert!(matches!(
        queue::apply(store, &dup).await,
        Err(Error::InvalidJob(_))
    ));
}

on_both!(transitions_share_the_callers_transaction);
async fn transitions_share_the_callers_transaction(store: &Store) {
    let [id] = enqueue(store, &[NewJob::available("a")]).await[..] else {
        panic!()
    };
    let job = claim(store, "a", 1, "w").await.remove(0);
    let mut tx = store.begin().await.unwrap();
    queue::apply_one(&mut tx, Transition::complete(job.job_ref()))
        .await
        .unwrap();
    drop(tx); // rolled back
    assert_eq!(state(store, id).await, JobState::Running);
    let mut tx = store.begin().await.unwrap();
    queue::apply_one(&mut tx, Transition::complete(job.job_ref()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(state(store, id).await, JobState::Completed);
}

on_both!(idle_workers_are_woken_by_new_work);
async fn idle_workers_are_woken_by_new_work(store: &Store) {
    let mut listener = queue::listen(store).await.unwrap();
    let waiting = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(10), listener.notified()).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    enqueue(store, &[NewJob::available("a")]).await;
    assert!(waiting.await.unwrap().is_ok(), "no wake-up within 10 s");
}

on_both!(a_lease_lost_on_the_last_attempt_is_claimed_over_budget);
async fn a_lease_lost_on_the_last_attempt_is_claimed_over_budget(store: &Store) {
    enqueue(
        store,
        &[NewJob {
            max_attempts: 1,
            ..NewJob::available("a")
        }],
    )
    .await;
    assert!(!claim(store, "a", 1, "dead").await[0].is_over_budget());
    queue::expire_leases_of(store, "dead").await.unwrap();
    let again = claim(store, "a", 1, "w").await.remove(0);
    assert!(again.is_over_budget());
    // The worker fails it instead of running it: no attempts left, so it fails for good.
    let retry = Transition::retry_after(again.job_ref(), Duration::ZERO, "lease lost");
    assert_eq!(
        queue::apply_one(store, retry).await.unwrap(),
        Outcome::Failed
    );
}

on_both!(snoozes_keep_the_attempt_budget_however_many_there_are);
async fn snoozes_keep_the_attempt_budget_however_many_there_are(store: &Store) {
    let [id] = enqueue(
        store,
        &[NewJob {
            max_attempts: 2,
            ..NewJob::available("a")
        }],
    )
    .await[..] else {
        panic!()
    };
    for _ in 0..20 {
        let job = claim(store, "a", 1, "w").await.remove(0);
        queue::apply_one(
            store,
            Transition::snooze(job.job_ref(), Duration::ZERO, None),
        )
        .await
        .unwrap();
    }
    let record = queue::job(store, id).await.unwrap().unwrap();
    assert_eq!(
        record.max_attempts - record.attempt,
        2,
        "both attempts are still left"
    );
}

on_both!(revive_leaves_running_and_waiting_jobs_alone);
async fn revive_leaves_running_and_waiting_jobs_alone(store: &Store) {
    let ids = enqueue(store, &[NewJob::available("a"), NewJob::available("b")]).await;
    let held = claim(store, "a", 1, "w").await.remove(0);
    let outcomes = queue::apply(
        store,
        &[
            Transition::revive(ids[0], 8, false),
            Transition::revive(ids[1], 8, false),
        ],
    )
    .await
    .unwrap();
    assert_eq!(outcomes, vec![Outcome::Fenced, Outcome::Fenced]);
    assert_eq!(state(store, held.id).await, JobState::Running);
    let record = queue::job(store, ids[1]).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.max_attempts),
        (JobState::Available, 8)
    );
}

on_both!(cancel_stops_queued_jobs_until_they_are_revived);
async fn cancel_stops_queued_jobs_until_they_are_revived(store: &Store) {
    let ids = enqueue(
        store,
        &[
            NewJob::available("a"),
            NewJob::blocked("a"),
            NewJob::available("a"),
            NewJob::available("a"),
        ],
    )
    .await;
    let held = claim(store, "a", 1, "w").await.remove(0);
    assert_eq!(held.id, ids[0]);
    // The held job is not the operator's to cancel: its claim finishes it.
    let outcomes = queue::apply(
        store,
        &[
            Transition::cancel(ids[0]),
            Transition::cancel(ids[1]),
            Transition::cancel(ids[2]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        vec![Outcome::Fenced, Outcome::Done, Outcome::Done]
    );
    assert_eq!(state(store, ids[0]).await, JobState::Running);
    for id in &ids[1..3] {
        let record = queue::job(store, *id).await.unwrap().unwrap();
        assert_eq!(record.state, JobState::Cancelled);
        assert!(record.finished_at.is_some());
    }
    // Cancelled jobs are not claimed, and do not keep a run going.
    let next = claim(store, "a", 10, "w").await;
    assert_eq!(next.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[3]]);
    queue::apply_one(store, Transition::complete(next[0].job_ref()))
        .await
        .unwrap();
    queue::apply_one(store, Transition::complete(held.job_ref()))
        .await
        .unwrap();
    assert!(!queue::has_runnable(store, None).await.unwrap());
    assert!(!queue::has_unfinished(store, None).await.unwrap());
    // A cancel of a finished job does nothing.
    assert_eq!(
        queue::apply(store, &[Transition::cancel(ids[3])])
            .await
            .unwrap(),
        vec![Outcome::Fenced]
    );
    // Revived, they run again: the blocked one waits again when told to.
    queue::apply_one(store, Transition::revive(ids[1], 8, true))
        .await
        .unwrap();
    queue::apply_one(store, Transition::revive(ids[2], 8, false))
        .await
        .unwrap();
    assert_eq!(state(store, ids[1]).await, JobState::Blocked);
    let again = claim(store, "a", 10, "w").await;
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[2]]);
}

on_both!(an_abandoned_claim_is_cancelled_without_using_its_attempt);
async fn an_abandoned_claim_is_cancelled_without_using_its_attempt(store: &Store) {
    let id = enqueue(
        store,
        &[NewJob {
            max_attempts: 1,
            ..NewJob::available("a")
        }],
    )
    .await[0];
    let first = claim(store, "a", 1, "w").await.remove(0);
    assert_eq!(
        queue::apply_one(store, Transition::abandon(first.job_ref()))
            .await
            .unwrap(),
        Outcome::Done
    );
    let record = queue::job(store, id).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.max_attempts),
        (JobState::Cancelled, 2)
    );
    // A stale claim cannot abandon a job it no longer holds.
    assert!(matches!(
        queue::apply_one(store, Transition::abandon(first.job_ref())).await,
        Err(Error::Fenced { .. })
    ));
    queue::apply_one(store, Transition::revive(id, 1, false))
        .await
        .unwrap();
    let again = claim(store, "a", 1, "w").await.remove(0);
    assert!(!again.is_over_budget());
}

on_both!(claims_skip_paused_groups_until_they_are_resumed);
async fn claims_skip_paused_groups_until_they_are_resumed(store: &Store) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let job = |group| NewJob {
        group: Some(group),
        ..NewJob::available("k")
    };
    let ids = enqueue(store, &[job(a), job(b), job(a), job(b)]).await;
    assert!(queue::pause(store, Some(b)).await.unwrap());
    assert!(
        !queue::pause(store, Some(b)).await.unwrap(),
        "already paused"
    );
    let got = claim(store, "k", 10, "w").await;
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[0], ids[2]]
    );
    assert_eq!(queue::paused_jobs(store, None).await.unwrap(), 2);
    assert_eq!(queue::paused_jobs(store, Some(a)).await.unwrap(), 0);
    for j in &got {
        queue::apply_one(store, Transition::complete(j.job_ref()))
            .await
            .unwrap();
    }
    // Only paused work is left: nothing runnable, nothing scheduled.
    assert!(!queue::has_runnable(store, None).await.unwrap());
    assert_eq!(queue::next_run_at(store, None).await.unwrap(), None);
    assert!(queue::has_unfinished(store, None).await.unwrap());
    // Pausing everything holds a group that was never paused on its own too.
    let c = Uuid::new_v4();
    let late = enqueue(store, &[job(c)]).await[0];
    assert!(queue::pause(store, None).await.unwrap());
    assert!(claim(store, "k", 10, "w").await.is_empty());
    let pauses: HashSet<Option<Uuid>> = queue::pauses(store)
        .await
        .unwrap()
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    assert_eq!(pauses, HashSet::from([Some(b), None]));
    // Resuming one group leaves the pause of everything.
    assert!(queue::resume(store, Some(b)).await.unwrap());
    assert!(claim(store, "k", 10, "w").await.is_empty());
    assert!(queue::resume(store, None).await.unwrap());
    assert!(!queue::resume(store, None).await.unwrap(), "nothing paused");
    let rest = claim(store, "k", 10, "w").await;
    assert_eq!(
        rest.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[1], ids[3], late]
    );
}

on_both!(a_running_job_of_a_paused_group_finishes_and_keeps_the_run_going);
async fn a_running_job_of_a_paused_group_finishes_and_keeps_the_run_going(store: &Store) {
    let g = Uuid::new_v4();
    let id = enqueue(
        store,
        &[NewJob {
            group: Some(g),
            ..NewJob::available("k")
        }],
    )
    .await[0];
    let held = claim(store, "k", 1, "w").await.remove(0);
    queue::pause(store, None).await.unwrap();
    // Work in flight counts as runnable (its claim may still retry it) ...
    assert!(queue::has_runnable(store, None).await.unwrap());
    // ... and finishes as usual.
    queue::apply_one(store, Transition::complete(held.job_ref()))
        .await
        .unwrap();
    assert_eq!(state(store, id).await, JobState::Completed);
}

on_both!(a_finished_group_is_purged_whole_and_an_unfinished_one_is_kept);
async fn a_finished_group_is_purged_whole_and_an_unfinished_one_is_kept(store: &Store) {
    let (done, single, stopped) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let job = |group| NewJob {
        group: Some(group),
        ..NewJob::available("k")
    };
    let ids = enqueue(store, &[job(done), job(done), job(single), job(stopped)]).await;
    for j in claim(store, "k", 3, "w").await {
        let t = if j.id == ids[1] {
            Transition::fail(j.job_ref(), "no")
        } else {
            Transition::complete(j.job_ref())
        };
        queue::apply_one(store, t).await.unwrap();
    }
    queue::apply_one(store, Transition::cancel(ids[3]))
        .await
        .unwrap();
    // Finished, but not long enough ago.
    let hour = Duration::from_secs(3600);
    assert_eq!(
        queue::purge_finished_group(store, done, hour)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        queue::purge_finished_group(store, done, Duration::ZERO)
            .await
            .unwrap(),
        2
    );
    assert!(queue::job(store, ids[0]).await.unwrap().is_none());
    // A group with a completed job is finished too; one with cancelled work is not.
    assert_eq!(
        queue::purge_finished_group(store, single, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        queue::purge_finished_group(store, stopped, Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    assert_eq!(state(store, ids[3]).await, JobState::Cancelled);
    // Unfinished work keeps its group.
    let more = enqueue(store, &[job(done)]).await[0];
    assert_eq!(
        queue::purge_finished_group(store, done, Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    assert_eq!(state(store, more).await, JobState::Available);
}

// ---- rate budgets: shared through the store, on the store's clock (injected here) ----

mod budgets {
    use super::*;
    use queue::budget::{self, Reservation, Tuning};

    const S: i64 = 1_000_000;
    const MS: i64 = 1_000;

    fn granted(r: Reservation) -> (i64, i64, u32) {
        match r {
            Reservation::Granted {
                first,
                interval,
                count,
                ..
            } => (first, interval, count),
            other => panic!("expected slots, got {other:?}"),
        }
    }

    on_both!(members_draw_one_sequence_of_slots_from_the_store);
    async fn members_draw_one_sequence_of_slots_from_the_store(store: &Store) {
        let t = Tuning::default();
        let now = 1_000 * S;
        budget::join_at(store, "api", "host-a:1", 20.0, now)
            .await
            .unwrap();
        budget::join_at(store, "api", "host-b:2", 20.0, now)
            .await
            .unwrap();
        // Two processes take turns reserving at the same instant: one sequence, one
        // interval apart, whoever asks.
        let mut starts = Vec::new();
        for _ in 0..3 {
            let (a, interval, _) = granted(
                budget::reserve_at(store, "api", ("host-a:1", 1), now, S, &t)
                    .await
                    .unwrap(),
            );
            let (b, _, _) = granted(
                budget::reserve_at(store, "api", ("host-a:1", 1), now, S, &t)
                    .await
                    .unwrap(),
            );
            assert!(interval >= S / 20);
            starts.extend([a, b]);
        }
        assert_eq!(starts[0], now);
        for pair in starts.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                (1e6 / (20.0 * (1.0 - t.start_margin))).ceil() as i64
            );
        }
    }

    on_both!(the_lowest_configured_rate_wins_while_its_process_lives);
    async fn the_lowest_configured_rate_wins_while_its_process_lives(store: &Store) {
        let t = Tuning::default();
        let now = 50 * S;
        budget::join_at(store, "api", "fast:1", 20.0, now)
            .await
            .unwrap();
        let members = budget::join_at(store, "api", "slow:2", 5.0, now)
            .await
            .unwrap();
        assert_eq!(
            members
                .iter()
                .map(|m| (m.member.as_str(), m.ceiling))
                .collect::<Vec<_>>(),
            [("slow:2", 5.0), ("fast:1", 20.0)],
            "the live members, lowest rate first"
        );
        let (_, interval, _) = granted(
            budget::reserve_at(store, "api", ("host-a:1", 1), now, S, &t)
                .await
                .unwrap(),
        );
        assert!(interval >= S / 5, "the slow process's rate applies to both");
        // It stops: its rate no longer counts.
        budget::leave_at(store, "api", "slow:2", now).await.unwrap();
        budget::join_at(store, "api", "fast:1", 20.0, now)
            .await
            .unwrap();
        let (_, interval, _) = granted(
            budget::reserve_at(store, "api", ("fast:1", 1), now + S, S, &t)
                .await
                .unwrap(),
        );
        assert!(interval < S / 10);
        // A process that died leaves by silence: unseen for the TTL, it stops counting.
        budget::join_at(store, "api", "dead:3", 2.0, now)
            .await
            .unwrap();
        let later = now + budget::MEMBER_TTL + S;
        let members = budget::join_at(store, "api", "fast:1", 20.0, later)
            .await
            .unwrap();
        assert_eq!(members.len(), 1, "{members:?}");
        let views = budget::view_all_at(store, later, &t).await.unwrap();
        assert_eq!(views[0].state.ceiling, 20.0);
    }

    on_both!(a_refusal_pauses_every_process_and_shows_in_the_view);
    async fn a_refusal_pauses_every_process_and_shows_in_the_view(store: &Store) {
        let t = Tuning::default();
        let now = 100 * S;
        budget::join_at(store, "api", "a:1", 20.0, now)
            .await
            .unwrap();
        budget::join_at(store, "api", "b:2", 20.0, now)
            .await
            .unwrap();
        let before = budget::view_all_at(store, now, &t).await.unwrap()[0].rate_now;
        // Process a got a 429 with Retry-After: 1.
        budget::refuse_at(store, "api", now, S, &t).await.unwrap();
        // Process b asks 10 ms later: nothing before the pause ends.
        match budget::reserve_at(store, "api", ("b:2", 1), now + 10 * MS, 100 * MS, &t)
            .await
            .unwrap()
        {
            Reservation::NotBefore(at) => assert_eq!(at, now + S - 100 * MS),
            other => panic!("expected to wait for the pause, got {other:?}"),
        }
        let (first, _, _) = granted(
            budget::reserve_at(store, "api", ("b:2", 1), now + S - 100 * MS, 100 * MS, &t)
                .await
                .unwrap(),
        );
        assert_eq!(first, now + S);
        let view = &budget::view_all_at(store, now + S, &t).await.unwrap()[0];
        assert_eq!(view.refusals_last_minute, 1);
        assert!(
            view.rate_now < before,
            "cut after a 429: {} vs {before}",
            view.rate_now
        );
        assert_eq!(view.members.len(), 2);
        let a_minute_on = &budget::view_all_at(store, now + 61 * S, &t).await.unwrap()[0];
        assert_eq!(a_minute_on.refusals_last_minute, 0);
    }

    on_both!(a_learned_limit_is_shared_kept_per_origin_and_resumed);
    async fn a_learned_limit_is_shared_kept_per_origin_and_resumed(store: &Store) {
        let t = Tuning::default();
        let now = 100 * S;
        let origin = "https://eu.example";
        // Two processes learn one origin's limit, capped at 1000/s.
        for member in ["a:1", "b:2"] {
            budget::join_learning_at(store, "api", (member, 1000.0, Some(origin)), now, &t)
                .await
                .unwrap();
        }
        let view = &budget::view_all_at(store, now, &t).await.unwrap()[0];
        assert!(view.state.learning, "{view:?}");
        assert_eq!(view.origin, origin);
        assert_eq!(view.limit_now, t.learn_start, "starts low, not at the cap");
        // Used to the full for two seconds, no 429: it climbed.
        let mut at = now;
        while at < now + 2 * S {
            match budget::reserve_at(store, "api", ("a:1", 4), at, 100 * MS, &t)
                .await
                .unwrap()
            {
                Reservation::Granted {
                    first,
                    interval,
                    count,
                    ..
                } => at = first + interval * i64::from(count - 1),
                Reservation::NotBefore(next) => at = next,
            }
        }
        let climbed = budget::view_all_at(store, at, &t).await.unwrap()[0].limit_now;
        assert!(climbed > 4.0 * t.learn_start, "{climbed}");
        // b's call is refused: what every process learns is the rate before it.
        budget::refuse_sent_at(store, "api", (at, at - 5 * MS), S, &t)
            .await
            .unwrap();
        let view = &budget::view_all_at(store, at + S, &t).await.unwrap()[0];
        let learned = view.limit_now;
        assert!(
            learned < climbed && learned > 0.5 * climbed,
            "{learned} vs {climbed}"
        );
        assert_eq!(view.state.refused_at, at);
        // Kept for the origin; a budget of another store starts from it (here: the same
        // store's budget, learning another origin meanwhile, then this one again).
        budget::keep_learned_at(store, "api", origin, at + S, &t)
            .await
            .unwrap();
        let kept = budget::learned_for(store, "api", origin)
            .await
            .unwrap()
            .unwrap();
        assert!(
            (kept.learned - learned).abs() < 1e-6,
            "{kept:?} vs {learned}"
        );
        assert_eq!(kept.refused_at_us, at);
        let later = at + 3600 * S;
        budget::join_learning_at(
            store,
            "api",
            ("c:3", 1000.0, Some("https://us.example")),
            later,
            &t,
        )
        .await
        .unwrap();
        let other = &budget::view_all_at(store, later, &t).await.unwrap()[0];
        assert_eq!(
            other.limit_now, t.learn_start,
            "nothing learned of that origin"
        );
        budget::join_learning_at(store, "api", ("d:4", 1000.0, Some(origin)), later, &t)
            .await
            .unwrap();
        let resumed = &budget::view_all_at(store, later, &t).await.unwrap()[0];
        assert!((resumed.limit_now - learned).abs() < 1e-6, "{resumed:?}");
        assert_eq!(resumed.state.refused_at, at, "and how it got there");
        assert_eq!(budget::learned_all(store).await.unwrap().len(), 1);
        // Processes given a fixed rate only: the learned limit no longer applies.
        for member in ["a:1", "b:2", "c:3", "d:4"] {
            budget::leave_at(store, "api", member, later).await.unwrap();
        }
        budget::join_at(store, "api", "e:5", 50.0, later)
            .await
            .unwrap();
        let fixed = &budget::view_all_at(store, later, &t).await.unwrap()[0];
        assert!(!fixed.state.learning);
        assert_eq!(fixed.limit_now, 50.0);
    }

    on_both!(concurrent_reservations_never_share_a_slot);
    async fn concurrent_reservations_never_share_a_slot(store: &Store) {
        let t = Tuning::default();
        let now = budget::store_now(store).await.unwrap();
        budget::join_at(store, "upload", "p:1", 1000.0, now)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut slots = Vec::new();
                for _ in 0..25 {
                    // A horizon of an hour: every reservation is granted.
                    let r = budget::reserve_at(&store, "upload", ("p:1", 3), now, 3600 * S, &t)
                        .await
                        .unwrap();
                    let (first, interval, count) = granted(r);
                    slots.extend((0..i64::from(count)).map(|i| (first + i * interval, interval)));
                }
                slots
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort();
        assert_eq!(all.len(), 8 * 25 * 3);
        for pair in all.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= pair[0].1,
                "slots {pair:?} closer than an interval"
            );
        }
    }
}
