//! The straightforward way to do the job, for comparison with the importer: a fixed pool of
//! tasks, each taking the next manifest row and following the vendor's recipe per ticket —
//! for each file in turn read it whole, MD5 it, presign, PUT; then create the ticket. No
//! queue, no database, no retries, no rate limit. It is what `bench/pipeline.sh` races.
//!
//! Run: `cargo bench --bench baseline -- MANIFEST API_URL` with `VISIBUILD_TOKEN` set;
//! `BASELINE_CONCURRENCY` (default 16, the importer's default `--workers`) sets the pool.
//! One row is one ticket (the generated manifests never repeat a ref). Prints
//! `baseline: <T> tickets, <F> files in <s>s = <t/s> tickets/s, <f/s> files/s (pool <N>)`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest, Md5};
use serde_json::{Value, json};

/// One manifest row: the fields the recipe sends.
struct Row {
    project_id: String,
    title: String,
    priority: Option<String>,
    address: Option<String>,
    files: Vec<PathBuf>,
}

fn read_manifest(manifest: &Path) -> anyhow::Result<Vec<Row>> {
    let root = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut reader = csv::Reader::from_path(manifest)?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (project, title) = (
        column("project_id").context("no project_id column")?,
        column("title").context("no title column")?,
    );
    let (priority, address, attachments) =
        (column("priority"), column("address"), column("attachments"));
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record?;
        let optional = |i: Option<usize>| {
            i.and_then(|i| record.get(i))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        rows.push(Row {
            project_id: record[project].to_string(),
            title: record[title].to_string(),
            priority: optional(priority),
            address: optional(address),
            files: optional(attachments)
                .map(|list| {
                    list.split(';')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(|p| root.join(p))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(rows)
}

/// The vendor's recipe for one ticket. Returns how many files it uploaded.
async fn import_ticket(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    row: &Row,
) -> anyhow::Result<usize> {
    let mut keys = Vec::new();
    for path in &row.files {
        let contents = tokio::fs::read(path)
            .await
            .with_context(|| path.display().to_string())?;
        let checksum = BASE64.encode(Md5::digest(&contents));
        let filename = path.file_name().unwrap_or_default().to_string_lossy();
        let content_type = mime_guess::from_path(path).first_or_octet_stream();
        let presign: Value = http
            .post(format!("{api}/api/core/v1/attachments"))
            .bearer_auth(token)
            .json(&json!({
                "filename": filename,
                "contentType": content_type.essence_str(),
                "fileSize": contents.len(),
                "checksum": checksum,
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let upload = &presign["data"]["upload"];
        let mut put = http.put(upload["url"].as_str().context("presign without url")?);
        for (name, value) in upload["headers"].as_object().into_iter().flatten() {
            put = put.header(name.as_str(), value.as_str().unwrap_or_default());
        }
        let status = put.body(contents).send().await?.status();
        ensure!(status.is_success(), "PUT answered {status}");
        keys.push(upload["key"].clone());
    }
    let mut ticket = json!({
        "title": row.title,
        "projectId": row.project_id,
        "attachmentKeys": keys,
    });
    if let Some(p) = &row.priority {
        ticket["priority"] = json!(p);
    }
    if let Some(a) = &row.address {
        ticket["address"] = json!(a);
    }
    http.post(format!("{api}/api/core/v1/tickets"))
        .bearer_auth(token)
        .json(&ticket)
        .send()
        .await?
        .error_for_status()?;
    Ok(row.files.len())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs harness-less benches too; only measure under `cargo bench`.
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "baseline bench: skipped (run it with `cargo bench --bench baseline -- MANIFEST API_URL`)"
        );
        return Ok(());
    }
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [manifest, api] = positional[..] else {
        bail!("usage: baseline --bench MANIFEST API_URL");
    };
    let token = std::env::var("VISIBUILD_TOKEN").context("set VISIBUILD_TOKEN")?;
    let pool: usize = match std::env::var("BASELINE_CONCURRENCY") {
        Ok(v) => v.parse().context("BASELINE_CONCURRENCY")?,
        Err(_) => 16,
    };
    let rows = read_manifest(Path::new(manifest))?;
    let tickets = rows.len();
    let api = api.trim_end_matches('/').to_string();
    visibuild_import::visibuild::use_ring_for_tls();
    let http = reqwest::Client::new();

    let started = Instant::now();
    let next = Arc::new(Mutex::new(rows.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..pool {
        let (next, http, api, token) = (next.clone(), http.clone(), api.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut files = 0;
            loop {
                let row = next.lock().expect("no task panics holding it").next();
                let Some(row) = row else {
                    return anyhow::Ok(files);
                };
                files += import_ticket(&http, &api, &token, &row).await?;
            }
        }));
    }
    let mut files = 0;
    for task in tasks {
        files += task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "baseline: {tickets} tickets, {files} files in {secs:.3}s = {:.1} tickets/s, {:.1} files/s (pool {pool})",
        tickets as f64 / secs,
        files as f64 / secs
    );
    Ok(())
}
