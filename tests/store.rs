//! The store behind `DATABASE_URL`: created and migrated on first use and found again, on
//! both engines.

#[macro_use]
mod common;

use common::Db;
use visibuild_import::domain::JobKind;
use visibuild_queue::{self as queue, NewJob, Store};

on_both!(connect_creates_and_migrates_a_missing_store_and_finds_it_again);
async fn connect_creates_and_migrates_a_missing_store_and_finds_it_again(db: Db) {
    let store = visibuild_import::store::connect_with(&db.url, 2)
        .await
        .unwrap();
    assert!(!queue::has_unfinished(&store, None).await.unwrap());
    queue::enqueue(&store, &[NewJob::available(JobKind::Upload.as_str())])
        .await
        .unwrap();
    store.close().await;

    let store = visibuild_import::store::connect(&db.url).await.unwrap();
    assert!(
        queue::has_unfinished(&store, None).await.unwrap(),
        "same store, kept"
    );
    // Migrating again is a no-op.
    visibuild_import::store::migrate(&store).await.unwrap();
    store.close().await;
}

/// A Postgres queue made before the queue was its own crate (jobs naming their batch,
/// ticket and attachment) is brought to the new shape with its jobs: an upload's target is
/// its attachment, a create's its ticket, and the work goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_queue_from_before_the_queue_crate_keeps_its_jobs() {
    use sqlx::migrate::MigrateDatabase;
    let db = Db::new("upgrade");
    sqlx::Postgres::create_database(&db.url).await.unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    visibuild_import::store::POSTGRES_SCHEMA
        .run_to(20261201000011, &pool)
        .await
        .unwrap();
    let (batch, ticket, attachment) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    for (sql, ids) in [
        (
            "INSERT INTO batches (id, name, manifest_path, files_root) VALUES ($1, 'old', 'm.csv', '/')",
            vec![batch],
        ),
        (
            "INSERT INTO tickets (id, batch_id, project_id, ref, line, title, fields_digest)
             VALUES ($1, $2, $1, 'R-1', 2, 'Old', 'd')",
            vec![ticket, batch],
        ),
        (
            "INSERT INTO attachments (id, ticket_id, position, path, resolved_path, filename,
                                      content_type, size)
             VALUES ($1, $2, 0, 'a.jpg', '/a.jpg', 'a.jpg', 'image/jpeg', 1)",
            vec![attachment, ticket],
        ),
        (
            "INSERT INTO jobs (kind, state, batch_id, ticket_id, attachment_id)
             VALUES ('upload', 'available', $1, $2, $3),
                    ('create_ticket', 'blocked', $1, $2, NULL)",
            vec![batch, ticket, attachment],
        ),
    ] {
        let mut q = sqlx::query(sql);
        for id in ids {
            q = q.bind(id);
        }
        q.execute(&pool).await.unwrap();
    }
    pool.close().await;

    let store = visibuild_import::store::connect(&db.url).await.unwrap();
    let upload = queue::claim(
        &store,
        Some(batch),
        &["upload"],
        10,
        "w",
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(upload.len(), 1);
    assert_eq!(upload[0].target_id, Some(attachment));
    let counts = queue::counts_by_state(&store, Some(batch)).await.unwrap();
    assert!(
        counts.contains(&("create_ticket".into(), queue::JobState::Blocked, 1)),
        "{counts:?}"
    );
    let Store::Postgres(pool) = &store else {
        unreachable!()
    };
    let create_target: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT target_id FROM jobs WHERE kind = 'create_ticket'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(create_target, Some(ticket));
    store.close().await;
}

on_both!(processes_starting_together_on_a_fresh_store_all_migrate_it);
/// Eight processes opening one new store at once (a cron night starting several `run`s):
/// each finds it migrated, none fails on a migration another applied (SQLite's migrator
/// takes no lock of its own; the store takes turns on its folder). Three rounds.
async fn processes_starting_together_on_a_fresh_store_all_migrate_it(_db: Db) {
    let kind = _db.kind();
    for round in 0..3 {
        let db = Db::on(kind, &format!("race{round}"));
        let runs: Vec<_> = (0..8)
            .map(|_| common::output(common::bin(&db, &["status"])))
            .collect();
        for out in futures_util::future::join_all(runs).await {
            assert_eq!(out.code, 0, "round {round}: {out:?}");
        }
    }
}
