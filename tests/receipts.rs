//! `--receipts` through the real binary: every ticket without files gets one
//! `import-receipt.txt`, so a lost or 5xx create answer is proven like any ticket with
//! files — exactly once, and nothing left for review.

mod common;

use common::*;
use std::collections::BTreeMap;
use visibuild_import::pipeline::hash::md5_bytes;
use visibuild_sandbox::SandboxConfig;

const FAST: [&str; 4] = ["--api-rate", "1000/s", "--upload-rate", "1000/s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_receipts_lost_and_5xx_create_answers_leave_every_ticket_created_once_and_none_for_review()
 {
    let db = Db::new("receipts");
    let sb = start(SandboxConfig {
        fail_rate: 0.05,
        drop_rate: 0.06,
        seed: Some(13),
        ..Default::default()
    })
    .await;
    // 150 tickets, two of every three without files.
    let manifest = Manifest::new(150, |t| usize::from(t % 3 == 0));
    let mut args = vec!["import", manifest.arg(), "--receipts", "--api-url"];
    let url = sb.base_url();
    args.push(&url);
    args.extend(FAST);
    let out = output(with_token(&db, &args)).await;
    assert_eq!(out.code, 0, "{out:?}");

    assert_eq!(created_by_title(&sb), each_once(150));
    let pool = db.pool().await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tickets WHERE state <> 'created'"
        )
        .await,
        0
    );
    let receipts: BTreeMap<String, Vec<u8>> = sqlx::query_as::<_, (String, Vec<u8>)>(
        "SELECT t.title, a.inline_content FROM attachments a JOIN tickets t ON t.id = a.ticket_id
          WHERE a.inline_content IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(receipts.len(), 100, "one receipt per ticket without files");
    for ticket in sb.tickets() {
        let t: usize = ticket.title["Defect ".len()..].parse().unwrap();
        let named: Vec<_> = ticket
            .attachments
            .iter()
            .filter(|a| a.filename == "import-receipt.txt")
            .collect();
        if t.is_multiple_of(3) {
            assert!(named.is_empty(), "{ticket:?}");
            assert_eq!(ticket.attachments.len(), 1, "{ticket:?}");
        } else {
            assert_eq!(named.len(), 1, "{ticket:?}");
            assert_eq!(ticket.attachments.len(), 1, "{ticket:?}");
            // The bytes that went up are the ones stored at load: a retry sends the same.
            assert_eq!(named[0].md5, md5_bytes(&receipts[&ticket.title]));
            assert_eq!(named[0].content_type, "text/plain");
            let text = String::from_utf8(receipts[&ticket.title].clone()).unwrap();
            assert!(text.contains(&format!("ref: DEF-{t:04}")), "{text}");
            assert!(text.contains("manifest: manifest.csv"), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_receipts_a_file_less_ticket_whose_create_answer_is_lost_still_needs_review() {
    let db = Db::new("noreceipts");
    let sb = start(SandboxConfig {
        drop_rate: 1.0,
        ..Default::default()
    })
    .await;
    let manifest = Manifest::new(1, |_| 0);
    let mut args = vec!["import", manifest.arg(), "--api-url"];
    let url = sb.base_url();
    args.push(&url);
    args.extend(FAST);
    let out = output(with_token(&db, &args)).await;
    assert_eq!(out.code, 1, "{out:?}");
    let pool = db.pool().await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tickets WHERE state = 'needs_review'"
        )
        .await,
        1
    );
    assert_eq!(
        sb.tickets().len(),
        1,
        "it did land: only a person could know"
    );
}

#[tokio::test]
async fn a_batch_keeps_its_receipts_choice_and_a_load_choosing_otherwise_is_refused() {
    let db = Db::new("receiptchoice");
    let manifest = Manifest::new(2, |_| 0);
    let out = output(bin(&db, &["enqueue", manifest.arg(), "--receipts"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("2 tickets and 2 files added"),
        "{out:?}"
    );

    let more = Manifest::with_refs("NEW", 2, |_| 0);
    std::fs::copy(&more.path, &manifest.path).unwrap();
    let out = output(bin(&db, &["enqueue", manifest.arg()])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("was loaded with --receipts and this load is without --receipts"),
        "{out:?}"
    );
    let pool = db.pool().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM tickets").await,
        2,
        "nothing loaded"
    );

    let out = output(bin(&db, &["enqueue", manifest.arg(), "--receipts"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM attachments WHERE inline_content IS NOT NULL"
        )
        .await,
        4
    );
}
