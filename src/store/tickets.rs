//! The import's own tables: batches, tickets, attachments and the hash cache, and the
//! settling writes that move them together with their jobs' transitions, in one transaction
//! (fan-in, re-upload, outcomes). Jobs change only through the queue's `apply`.

use super::{Conn, Ex, Store, StoreError, Timestamp};
use crate::domain::{
    AttachmentId, AttachmentState, BatchId, FileStamp, JobId, JobKind, Priority, ProjectId,
    TicketId, TicketState,
};
use crate::manifest::TicketSpec;
use serde_json::json;
use sqlx::{QueryBuilder, Sqlite};
use std::collections::HashMap;
use time::OffsetDateTime;
use visibuild_queue::{self as queue, JobRef, NewJob, Transition, on, sql};

/// Tickets loaded per statement.
const LOAD_CHUNK: usize = 2_000;

/// Rows per multi-row `INSERT … VALUES` in SQLite: at eleven columns, well under its limit
/// of 32,766 parameters a statement.
const SQLITE_ROWS_PER_INSERT: usize = 500;

/// A batch, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Batch {
    pub id: BatchId,
    pub name: String,
    pub manifest_path: String,
    pub files_root: String,
    pub created_at: Timestamp,
}

/// Find or create the batch named `name`.
pub async fn upsert_batch<'c>(
    ex: impl Into<Ex<'c>>,
    name: &str,
    manifest_path: &str,
    files_root: &str,
) -> Result<BatchId, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "INSERT INTO batches (id, name, manifest_path, files_root) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET manifest_path = EXCLUDED.manifest_path
             RETURNING id"
        ),
        |c, q| sqlx::query_scalar(q)
            .bind(BatchId::new())
            .bind(name)
            .bind(manifest_path)
            .bind(files_root)
            .fetch_one(c)
            .await
    )?)
}

pub async fn batches<'c>(ex: impl Into<Ex<'c>>) -> Result<Vec<Batch>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT id, name, manifest_path, files_root, created_at FROM batches
              ORDER BY created_at, name"
        ),
        |c, q| sqlx::query_as(q).fetch_all(c).await
    )?)
}

pub async fn batch_by_name<'c>(
    ex: impl Into<Ex<'c>>,
    name: &str,
) -> Result<Option<Batch>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT id, name, manifest_path, files_root, created_at FROM batches
              WHERE name = $1"
        ),
        |c, q| sqlx::query_as(q).bind(name).fetch_optional(c).await
    )?)
}

/// A ref that was loaded before with other fields: reported, never duplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedRef {
    pub project_id: ProjectId,
    pub reference: String,
    pub line: u64,
    /// The manifest fields that differ from what was loaded: `title`, `attachments`, ….
    pub fields: Vec<&'static str>,
}

/// What a load did.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub tickets_added: u64,
    pub attachments_added: u64,
    pub unchanged: u64,
    pub changed: Vec<ChangedRef>,
}

/// Record whether `batch` gives file-less tickets a receipt. Chosen by the batch's first
/// load; a later load that chooses otherwise gets `Err(what the batch has)` and changes
/// nothing, so a batch never mixes the two.
pub async fn set_batch_receipts(
    conn: &mut Conn<'_>,
    batch: BatchId,
    receipts: bool,
) -> Result<Result<(), bool>, StoreError> {
    let changed = on!(
        &mut *conn,
        sql!(
            "UPDATE batches SET receipts = $2
              WHERE id = $1
                AND (receipts = $2 OR NOT EXISTS (SELECT 1 FROM tickets WHERE batch_id = $1))"
        ),
        |c, q| sqlx::query(q)
            .bind(batch)
            .bind(receipts)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?;
    if changed == 1 {
        return Ok(Ok(()));
    }
    let chosen: bool = on!(
        &mut *conn,
        sql!("SELECT receipts FROM batches WHERE id = $1"),
        |c, q| sqlx::query_scalar(q).bind(batch).fetch_one(c).await
    )?;
    Ok(Err(chosen))
}

/// Where the receipts of a `--receipts` load say they came from.
#[derive(Debug, Clone)]
pub struct ReceiptSource {
    /// The manifest's file name.
    pub manifest: String,
    pub batch: String,
}

/// Load checked tickets into `batch`, with their attachments and jobs, inside the caller's
/// transaction. Tickets whose (project_id, ref) exist keep their state; one whose fields
/// changed is noted (`changed_since_load`, naming the fields and `source`'s line), one
/// loaded again unchanged loses that note. With `receipts`, each new ticket without files
/// gets an `import-receipt.txt` attachment (bytes stored).
pub async fn load_tickets(
    conn: &mut Conn<'_>,
    batch: BatchId,
    tickets: &[TicketSpec],
    max_attempts: i32,
    source: &str,
    receipts: Option<&ReceiptSource>,
) -> Result<LoadReport, StoreError> {
    let loaded_at = OffsetDateTime::now_utc();
    let load = Load {
        batch,
        max_attempts,
        source,
        receipts,
        loaded_at,
    };
    let mut report = LoadReport::default();
    for chunk in tickets.chunks(LOAD_CHUNK) {
        let sorted = sort_page(conn, chunk.to_vec()).await?;
        load_sorted(conn, &load, &sorted, &mut report).await?;
    }
    Ok(report)
}

/// A page of checked tickets sorted against what the store holds: the new ones with their
/// ids and digests, the ones loaded before (changed or not).
#[derive(Debug)]
pub struct SortedPage {
    tickets: Vec<TicketSpec>,
    /// `(id, ticket index, fields digest)` of the tickets not loaded before.
    fresh: Vec<(TicketId, usize, String)>,
    changed: Vec<usize>,
    unchanged: Vec<usize>,
}

/// Sorts a page of tickets against the store (read only: any connection will do).
pub async fn sort_page(
    conn: &mut Conn<'_>,
    tickets: Vec<TicketSpec>,
) -> Result<SortedPage, StoreError> {
    let existing = existing_digests(conn, &tickets).await?;
    let existing: HashMap<(ProjectId, &str), &str> = existing
        .iter()
        .map(|(p, r, d)| ((*p, r.as_str()), d.as_str()))
        .collect();
    let mut fresh = Vec::new();
    let (mut changed, mut unchanged) = (Vec::new(), Vec::new());
    for (i, spec) in tickets.iter().enumerate() {
        let digest = spec.fields_digest();
        match existing.get(&(spec.project_id, spec.reference.as_str())) {
            Some(old) if *old == digest => unchanged.push(i),
            Some(_) => changed.push(i),
            None => fresh.push((TicketId::new(), i, digest)),
        }
    }
    drop(existing);
    Ok(SortedPage {
        tickets,
        fresh,
        changed,
        unchanged,
    })
}

/// What every page of one load shares.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    pub batch: BatchId,
    pub max_attempts: i32,
    /// The manifest, for the notes of refs that changed since they were loaded.
    pub source: &'a str,
    pub receipts: Option<&'a ReceiptSource>,
    /// The load's time (a receipt says it), the same on every page.
    pub loaded_at: OffsetDateTime,
}

/// One attachment row to insert.
struct NewAttachment<'a> {
    ticket: TicketId,
    position: i32,
    path: &'a str,
    resolved: String,
    /// The folder it is opened inside; empty for a receipt.
    root: String,
    filename: &'a str,
    content_type: &'a str,
    size: i64,
    mtime_ns: Option<i64>,
    /// A receipt's bytes.
    inline: Option<Vec<u8>>,
}

/// The attachment rows of a chunk, a column each, for one `UNNEST` insert.
#[derive(Default)]
struct AttachmentColumns<'a> {
    ids: Vec<AttachmentId>,
    tickets: Vec<TicketId>,
    positions: Vec<i32>,
    paths: Vec<&'a str>,
    resolved: Vec<String>,
    roots: Vec<String>,
    filenames: Vec<&'a str>,
    content_types: Vec<&'a str>,
    sizes: Vec<i64>,
    mtimes: Vec<Option<i64>>,
    inline: Vec<Option<Vec<u8>>>,
}

impl<'a> AttachmentColumns<'a> {
    fn push(&mut self, row: NewAttachment<'a>) -> AttachmentId {
        let id = AttachmentId::new();
        self.ids.push(id);
        self.tickets.push(row.ticket);
        self.positions.push(row.position);
        self.paths.push(row.path);
        self.resolved.push(row.resolved);
        self.roots.push(row.root);
        self.filenames.push(row.filename);
        self.content_types.push(row.content_type);
        self.sizes.push(row.size);
        self.mtimes.push(row.mtime_ns);
        self.inline.push(row.inline);
        id
    }
}

/// The upload job of a new attachment.
fn upload_job(load: &Load<'_>, attachment: AttachmentId) -> NewJob {
    NewJob {
        group: Some(load.batch.0),
        target: Some(attachment.0),
        max_attempts: load.max_attempts,
        ..NewJob::available(JobKind::Upload.as_str())
    }
}

/// The loaded fields of a ticket, to name what a re-load changed.
#[derive(Debug, sqlx::FromRow)]
struct LoadedFields {
    title: String,
    address: Option<String>,
    priority: Option<String>,
    contact_name: Option<String>,
    contact_email: Option<String>,
    #[sqlx(skip)]
    paths: Vec<String>,
}

/// The manifest fields of `spec` that differ from what was loaded.
fn changed_fields(loaded: &LoadedFields, spec: &TicketSpec) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if loaded.title != spec.title {
        fields.push("title");
    }
    if loaded.address != spec.address {
        fields.push("address");
    }
    if loaded.priority.as_deref() != spec.priority.map(Priority::as_str) {
        fields.push("priority");
    }
    if loaded.contact_name != spec.contact_name {
        fields.push("contact_name");
    }
    if loaded.contact_email != spec.contact_email {
        fields.push("contact_email");
    }
    if !loaded
        .paths
        .iter()
        .map(String::as_str)
        .eq(spec.attachments.iter().map(|a| &*a.path))
    {
        fields.push("attachments");
    }
    fields
}

/// Note the refs of `chunk` that changed since they were loaded, and clear the note of the
/// ones loaded again unchanged.
async fn note_changes(
    conn: &mut Conn<'_>,
    chunk: &[TicketSpec],
    changed: &[usize],
    unchanged: &[usize],
    source: &str,
    report: &mut LoadReport,
) -> Result<(), StoreError> {
    if !unchanged.is_empty() {
        let keys = unchanged
            .iter()
            .map(|&i| (chunk[i].project_id, chunk[i].reference.as_str()));
        match conn {
            Conn::Postgres(c) => {
                let (projects, refs): (Vec<ProjectId>, Vec<&str>) = keys.unzip();
                sqlx::query(
                    "UPDATE tickets t SET changed_since_load = NULL
                       FROM UNNEST($1::uuid[], $2::text[]) AS k (project_id, ref)
                      WHERE t.project_id = k.project_id AND t.ref = k.ref
                        AND t.changed_since_load IS NOT NULL",
                )
                .bind(projects)
                .bind(refs)
                .execute(&mut **c)
                .await?;
            }
            Conn::Sqlite(c) => {
                sqlx::query(
                    "UPDATE tickets SET changed_since_load = NULL
                      WHERE changed_since_load IS NOT NULL
                        AND (project_id, ref) IN
                            (SELECT unhex(value ->> 0), value ->> 1 FROM json_each($1))",
                )
                .bind(json_rows(keys.map(|(p, r)| json!([hex(p.0), r]))))
                .execute(&mut **c)
                .await?;
            }
        }
    }
    for &i in changed {
        let spec = &chunk[i];
        let mut loaded: LoadedFields = on!(
            &mut *conn,
            sql!(
                "SELECT title, address, priority, contact_name, contact_email
                   FROM tickets WHERE project_id = $1 AND ref = $2"
            ),
            |c, q| sqlx::query_as(q)
                .bind(spec.project_id)
                .bind(&spec.reference)
                .fetch_one(c)
                .await
        )?;
        loaded.paths = on!(
            &mut *conn,
            sql!(
                "SELECT a.path FROM attachments a JOIN tickets t ON t.id = a.ticket_id
                  WHERE t.project_id = $1 AND t.ref = $2 ORDER BY a.position"
            ),
            |c, q| sqlx::query_scalar(q)
                .bind(spec.project_id)
                .bind(&spec.reference)
                .fetch_all(c)
                .await
        )?;
        let mut fields = changed_fields(&loaded, spec);
        if fields.is_empty() {
            // The digest differs but no field we keep does (a project's spelling, say).
            fields.push("fields");
        }
        let note = format!("{} ({source}:{})", fields.join(", "), spec.line);
        on!(
            &mut *conn,
            sql!(
                "UPDATE tickets SET changed_since_load = $3, updated_at = {now}
                  WHERE project_id = $1 AND ref = $2"
            ),
            |c, q| sqlx::query(q)
                .bind(spec.project_id)
                .bind(&spec.reference)
                .bind(&note)
                .execute(c)
                .await
                .map(drop)
        )?;
        report.changed.push(ChangedRef {
            project_id: spec.project_id,
            reference: spec.reference.clone(),
            line: spec.line,
            fields,
        });
    }
    Ok(())
}

/// A UUID as SQLite's JSON rows carry it: 32 hex digits, read back with `unhex`.
fn hex(id: uuid::Uuid) -> String {
    id.simple().to_string()
}

/// Rows as one JSON array, SQLite's way of binding many rows as one parameter.
fn json_rows(rows: impl Iterator<Item = serde_json::Value>) -> String {
    serde_json::Value::Array(rows.collect()).to_string()
}

/// Loads a sorted page in the caller's transaction: the new tickets with their attachments
/// and jobs; the changed ones noted, the unchanged ones' notes cleared.
pub async fn load_sorted(
    conn: &mut Conn<'_>,
    load: &Load<'_>,
    page: &SortedPage,
    report: &mut LoadReport,
) -> Result<(), StoreError> {
    let batch = load.batch;
    let (changed, unchanged) = (&page.changed, &page.unchanged);
    report.unchanged += unchanged.len() as u64;
    if !(changed.is_empty() && unchanged.is_empty()) {
        note_changes(conn, &page.tickets, changed, unchanged, load.source, report).await?;
    }
    if page.fresh.is_empty() {
        return Ok(());
    }
    let fresh: Vec<(TicketId, &TicketSpec, &str)> = page
        .fresh
        .iter()
        .map(|(id, i, digest)| (*id, &page.tickets[*i], digest.as_str()))
        .collect();

    let inserted = insert_tickets(conn, batch, &fresh).await?;
    // A concurrent load of the same refs won the race for any ticket not returned here.
    let inserted: std::collections::HashSet<TicketId> = inserted.into_iter().collect();
    report.unchanged += (fresh.len() - inserted.len()) as u64;
    report.tickets_added += inserted.len() as u64;

    let mut rows = AttachmentColumns::default();
    let mut jobs = Vec::new();
    for (ticket, spec, _) in fresh.iter().filter(|f| inserted.contains(&f.0)) {
        let receipt = match load.receipts {
            Some(source) if spec.attachments.is_empty() => Some(
                crate::receipt::Receipt {
                    manifest: &source.manifest,
                    batch: &source.batch,
                    reference: &spec.reference,
                    project_id: spec.project_id,
                    loaded_at: load.loaded_at,
                }
                .bytes(),
            ),
            _ => None,
        };
        let has_files = !spec.attachments.is_empty() || receipt.is_some();
        if let Some(bytes) = receipt {
            let id = rows.push(NewAttachment {
                ticket: *ticket,
                position: 0,
                path: crate::receipt::FILENAME,
                resolved: String::new(),
                root: String::new(),
                filename: crate::receipt::FILENAME,
                content_type: crate::receipt::CONTENT_TYPE,
                size: bytes.len() as i64,
                mtime_ns: None,
                inline: Some(bytes),
            });
            jobs.push(upload_job(load, id));
        }
        for (pos, a) in spec.attachments.iter().enumerate() {
            let id = rows.push(NewAttachment {
                ticket: *ticket,
                position: pos as i32,
                path: &a.path,
                resolved: a.resolved.to_string_lossy().into_owned(),
                root: a.confine.to_string_lossy().into_owned(),
                filename: &a.filename,
                content_type: &a.content_type,
                size: a.size as i64,
                mtime_ns: Some(a.mtime_ns),
                inline: None,
            });
            jobs.push(upload_job(load, id));
        }
        let create = JobKind::CreateTicket.as_str();
        jobs.push(NewJob {
            group: Some(batch.0),
            target: Some(ticket.0),
            max_attempts: load.max_attempts,
            ..if has_files {
                NewJob::blocked(create)
            } else {
                NewJob::available(create)
            }
        });
    }
    if !rows.ids.is_empty() {
        insert_attachments(conn, &rows).await?;
        report.attachments_added += rows.ids.len() as u64;
    }
    queue::enqueue(&mut *conn, &jobs).await?;
    Ok(())
}

/// `(project, ref, fields digest)` of the tickets of `chunk` already loaded.
async fn existing_digests(
    conn: &mut Conn<'_>,
    chunk: &[TicketSpec],
) -> Result<Vec<(ProjectId, String, String)>, StoreError> {
    Ok(match conn {
        Conn::Postgres(c) => {
            let projects: Vec<ProjectId> = chunk.iter().map(|t| t.project_id).collect();
            let refs: Vec<&str> = chunk.iter().map(|t| t.reference.as_str()).collect();
            sqlx::query_as(
                "SELECT t.project_id, t.ref, t.fields_digest
                   FROM tickets t
                   JOIN UNNEST($1::uuid[], $2::text[]) AS k (project_id, ref)
                     ON t.project_id = k.project_id AND t.ref = k.ref",
            )
            .bind(projects)
            .bind(refs)
            .fetch_all(&mut **c)
            .await?
        }
        Conn::Sqlite(c) => {
            sqlx::query_as(
                "SELECT t.project_id, t.ref, t.fields_digest
                   FROM json_each($1) AS k
                   JOIN tickets t ON t.project_id = unhex(k.value ->> 0)
                                 AND t.ref = k.value ->> 1",
            )
            .bind(json_rows(
                chunk
                    .iter()
                    .map(|t| json!([hex(t.project_id.0), t.reference])),
            ))
            .fetch_all(&mut **c)
            .await?
        }
    })
}

/// Inserts the new tickets; the ids of those inserted — a ref a concurrent load inserted
/// first is skipped. The ids are asked for only then: read back row by row, they cost as
/// much as the insert.
async fn insert_tickets(
    conn: &mut Conn<'_>,
    batch: BatchId,
    fresh: &[(TicketId, &TicketSpec, &str)],
) -> Result<Vec<TicketId>, StoreError> {
    let inserted = insert_ticket_rows(conn, batch, fresh).await?;
    let ids = fresh.iter().map(|f| f.0);
    if inserted == fresh.len() as u64 {
        return Ok(ids.collect());
    }
    let ids: Vec<uuid::Uuid> = ids.map(|id| id.0).collect();
    Ok(on!(
        &mut *conn,
        sql!("SELECT id FROM tickets WHERE id {in_ids $1}"),
        |c, q| sqlx::query_scalar(q)
            .bind(queue::List(&ids))
            .fetch_all(c)
            .await
    )?)
}

/// Inserts the new tickets but those a concurrent load inserted first; how many it did.
async fn insert_ticket_rows(
    conn: &mut Conn<'_>,
    batch: BatchId,
    fresh: &[(TicketId, &TicketSpec, &str)],
) -> Result<u64, StoreError> {
    Ok(match conn {
        Conn::Postgres(c) => sqlx::query(
            "INSERT INTO tickets (id, batch_id, project_id, ref, line, title, address,
                                      priority, contact_name, contact_email, fields_digest)
                 SELECT t.id, $1, t.project_id, t.ref, t.line, t.title, t.address, t.priority,
                        t.contact_name, t.contact_email, t.digest
                   FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::bigint[], $6::text[],
                               $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
                     AS t (id, project_id, ref, line, title, address, priority, contact_name,
                           contact_email, digest)
                 ON CONFLICT (project_id, ref) DO NOTHING",
        )
        .bind(batch)
        .bind(fresh.iter().map(|f| f.0).collect::<Vec<_>>())
        .bind(fresh.iter().map(|f| f.1.project_id).collect::<Vec<_>>())
        .bind(
            fresh
                .iter()
                .map(|f| Some(f.1.reference.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(fresh.iter().map(|f| f.1.line as i64).collect::<Vec<_>>())
        .bind(
            fresh
                .iter()
                .map(|f| Some(f.1.title.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            fresh
                .iter()
                .map(|f| f.1.address.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            fresh
                .iter()
                .map(|f| f.1.priority.map(Priority::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(
            fresh
                .iter()
                .map(|f| f.1.contact_name.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            fresh
                .iter()
                .map(|f| f.1.contact_email.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(fresh.iter().map(|f| Some(f.2)).collect::<Vec<_>>())
        .execute(&mut **c)
        .await?
        .rows_affected(),
        Conn::Sqlite(c) => {
            // Bound values, not a JSON document: SQLite would parse a row's JSON again for
            // each field it takes out of it.
            let mut inserted = 0;
            for part in fresh.chunks(SQLITE_ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO tickets (id, batch_id, project_id, ref, line, title, address,
                                          priority, contact_name, contact_email, fields_digest) ",
                );
                insert.push_values(part, |mut row, (id, t, digest)| {
                    row.push_bind(*id)
                        .push_bind(batch)
                        .push_bind(t.project_id)
                        .push_bind(t.reference.as_str())
                        .push_bind(t.line as i64)
                        .push_bind(t.title.as_str())
                        .push_bind(t.address.as_deref())
                        .push_bind(t.priority.map(Priority::as_str))
                        .push_bind(t.contact_name.as_deref())
                        .push_bind(t.contact_email.as_deref())
                        .push_bind(*digest);
                });
                insert.push(" ON CONFLICT (project_id, ref) DO NOTHING");
                inserted += insert.build().execute(&mut **c).await?.rows_affected();
            }
            inserted
        }
    })
}

async fn insert_attachments(
    conn: &mut Conn<'_>,
    rows: &AttachmentColumns<'_>,
) -> Result<(), StoreError> {
    match conn {
        Conn::Postgres(c) => {
            sqlx::query(
                "INSERT INTO attachments (id, ticket_id, position, path, resolved_path, filename,
                                          content_type, size, mtime_ns, inline_content, root)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[],
                                      $6::text[], $7::text[], $8::bigint[], $9::bigint[],
                                      $10::bytea[], $11::text[])",
            )
            .bind(&rows.ids)
            .bind(&rows.tickets)
            .bind(&rows.positions)
            .bind(&rows.paths)
            .bind(&rows.resolved)
            .bind(&rows.filenames)
            .bind(&rows.content_types)
            .bind(&rows.sizes)
            .bind(&rows.mtimes)
            .bind(&rows.inline)
            .bind(&rows.roots)
            .execute(&mut **c)
            .await?;
        }
        Conn::Sqlite(c) => {
            let all: Vec<usize> = (0..rows.ids.len()).collect();
            for part in all.chunks(SQLITE_ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO attachments (id, ticket_id, position, path, resolved_path,
                                              filename, content_type, size, mtime_ns,
                                              inline_content, root) ",
                );
                insert.push_values(part, |mut row, &i| {
                    row.push_bind(rows.ids[i])
                        .push_bind(rows.tickets[i])
                        .push_bind(rows.positions[i])
                        .push_bind(rows.paths[i])
                        .push_bind(rows.resolved[i].as_str())
                        .push_bind(rows.filenames[i])
                        .push_bind(rows.content_types[i])
                        .push_bind(rows.sizes[i])
                        .push_bind(rows.mtimes[i])
                        .push_bind(rows.inline[i].as_deref())
                        .push_bind(rows.roots[i].as_str());
                });
                insert.build().execute(&mut **c).await?;
            }
        }
    }
    Ok(())
}

/// What an upload job needs to know.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UploadWork {
    pub attachment_id: AttachmentId,
    pub ticket_id: TicketId,
    pub project_id: ProjectId,
    pub ticket_ref: String,
    pub resolved_path: String,
    /// The folder the file is opened inside (empty on rows loaded before it was recorded:
    /// then the file's own folder).
    pub files_root: String,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    /// The file's modification time when it was last read (loaded, or uploaded).
    pub mtime_ns: Option<i64>,
    /// A receipt's bytes (`--receipts`): uploaded from here, not from a file.
    pub inline_content: Option<Vec<u8>>,
    pub state: AttachmentState,
    /// The hash cache's entry for this path, if any: (size, mtime in ns, MD5).
    pub cached_size: Option<i64>,
    pub cached_mtime_ns: Option<i64>,
    pub cached_md5: Option<String>,
}

impl UploadWork {
    /// The cached stamp and MD5 of the file, to reuse while the file is unchanged.
    pub fn cached_hash(&self) -> Option<(FileStamp, String)> {
        Some((
            FileStamp {
                size: u64::try_from(self.cached_size?).ok()?,
                mtime_ns: self.cached_mtime_ns?,
            },
            self.cached_md5.clone()?,
        ))
    }

    /// What the file looked like when it was last read, when that is known.
    pub fn last_stamp(&self) -> Option<FileStamp> {
        Some(FileStamp {
            size: u64::try_from(self.size).ok()?,
            mtime_ns: self.mtime_ns?,
        })
    }
}

pub async fn upload_work<'c>(
    ex: impl Into<Ex<'c>>,
    attachment: AttachmentId,
) -> Result<UploadWork, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT a.id AS attachment_id, a.ticket_id, t.project_id, t.ref AS ticket_ref,
                    a.resolved_path,
                    COALESCE(a.root, '') AS files_root, a.filename, a.content_type, a.size,
                    a.mtime_ns, a.inline_content, a.state,
                    h.size AS cached_size, h.mtime_ns AS cached_mtime_ns, h.md5 AS cached_md5
               FROM attachments a JOIN tickets t ON t.id = a.ticket_id
               LEFT JOIN file_hashes h ON h.resolved_path = a.resolved_path
              WHERE a.id = $1"
        ),
        |c, q| sqlx::query_as(q).bind(attachment).fetch_one(c).await
    )?)
}

/// What an upload left in S3: its key, and the bytes it carried (also cached by path).
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub key: String,
    pub resolved_path: String,
    pub size: i64,
    pub mtime_ns: i64,
    pub md5: String,
    /// How the file differed from when it was last read, if it did.
    pub change: Option<String>,
}

/// An upload done (or found done): its job, its attachment and ticket, and what S3 now holds
/// (`None`: it was uploaded already).
#[derive(Debug, Clone)]
pub struct UploadDone {
    pub job: JobRef,
    pub attachment: AttachmentId,
    pub ticket: TicketId,
    pub uploaded: Option<Uploaded>,
}

/// Settles many finished uploads in the caller's transaction: each attachment is marked,
/// each job completed, and every ticket whose last upload this was has its create job made
/// runnable. The tickets' rows are locked first (in id order, so concurrent batches cannot
/// deadlock) so that two uploads of one ticket finishing in two batches see each other
/// (neither both nor neither unblock); in SQLite the transaction holds the one write lock.
/// Per upload: `Ok(())`, or `Err(Fenced)` when its claim no longer holds (nothing of it is
/// written).
pub async fn finish_uploads(
    conn: &mut Conn<'_>,
    done: &[UploadDone],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    if let Conn::Postgres(c) = conn {
        // Losing this commit in a database crash costs one repeated upload (a new key; the
        // old object is never linked), never a duplicate ticket: no need to wait for the disk.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut **c)
            .await?;
    }
    let mut tickets: Vec<uuid::Uuid> = done.iter().map(|d| d.ticket.0).collect();
    tickets.sort();
    tickets.dedup();
    on!(
        &mut *conn,
        sql!("SELECT id FROM tickets WHERE id {in_ids $1} ORDER BY id {for_update}"),
        |c, q| sqlx::query(q)
            .bind(queue::List(&tickets))
            .execute(c)
            .await
            .map(drop)
    )?;
    let complete: Vec<Transition> = done.iter().map(|d| Transition::complete(d.job)).collect();
    let outcomes = queue::apply(&mut *conn, &complete).await?;
    let mut results = Vec::with_capacity(done.len());
    for (d, outcome) in done.iter().zip(outcomes) {
        if outcome == queue::Outcome::Fenced {
            results.push(Err(StoreError::Fenced {
                job: d.job.id,
                attempt: d.job.attempt,
            }));
            continue;
        }
        if let Some(u) = &d.uploaded {
            record_upload(conn, d.attachment, u).await?;
        }
        results.push(Ok(()));
    }
    // The fan-in: a ticket's last upload unblocks its create.
    let ready: Vec<JobId> = on!(
        &mut *conn,
        sql!(
            "SELECT j.id FROM jobs j
              WHERE j.kind = 'create_ticket' AND j.target_id {in_ids $1} AND j.state = 'blocked'
                AND NOT EXISTS (SELECT 1 FROM attachments a
                                 WHERE a.ticket_id = j.target_id AND a.state <> 'uploaded')"
        ),
        |c, q| sqlx::query_scalar(q)
            .bind(queue::List(&tickets))
            .fetch_all(c)
            .await
    )?;
    if !ready.is_empty() {
        let unblock: Vec<Transition> = ready.into_iter().map(Transition::unblock).collect();
        queue::apply(&mut *conn, &unblock).await?;
        queue::notify(&mut *conn).await?;
    }
    Ok(results)
}

/// An upload S3 confirmed whose job could not record it (the store was down), recorded now
/// unless the attachment was uploaded again meanwhile. Its job, when it runs again, finds
/// the attachment uploaded and completes (with the fan-in to the ticket's create).
pub async fn record_upload_found(
    conn: &mut Conn<'_>,
    attachment: AttachmentId,
    u: &Uploaded,
) -> Result<(), StoreError> {
    let uploaded: Option<bool> = on!(
        &mut *conn,
        sql!("SELECT state = 'uploaded' FROM attachments WHERE id = $1"),
        |c, q| sqlx::query_scalar(q)
            .bind(attachment)
            .fetch_optional(c)
            .await
    )?;
    if uploaded == Some(false) {
        record_upload(conn, attachment, u).await?;
    }
    Ok(())
}

/// The attachment is in S3 under `u.key`; its bytes' hash is cached by path.
async fn record_upload(
    conn: &mut Conn<'_>,
    attachment: AttachmentId,
    u: &Uploaded,
) -> Result<(), StoreError> {
    on!(
        &mut *conn,
        sql!(
            "UPDATE attachments SET state = 'uploaded', uploaded_at = {now}, last_error = NULL,
                    key = $2, size = $3, md5 = $4, mtime_ns = $5,
                    change_note = COALESCE($6, change_note)
              WHERE id = $1"
        ),
        |c, q| sqlx::query(q)
            .bind(attachment)
            .bind(&u.key)
            .bind(u.size)
            .bind(&u.md5)
            .bind(u.mtime_ns)
            .bind(u.change.as_deref())
            .execute(c)
            .await
            .map(drop)
    )?;
    on!(
        &mut *conn,
        sql!(
            "INSERT INTO file_hashes (resolved_path, size, mtime_ns, md5)
             SELECT $1, $2, $3, $4 WHERE $1 <> ''
             ON CONFLICT (resolved_path) DO UPDATE
                SET size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, md5 = EXCLUDED.md5"
        ),
        |c, q| sqlx::query(q)
            .bind(&u.resolved_path)
            .bind(u.size)
            .bind(u.mtime_ns)
            .bind(&u.md5)
            .execute(c)
            .await
            .map(drop)
    )?;
    Ok(())
}

/// An attachment that will not upload: it and its ticket are failed, with the reason.
pub async fn fail_attachment(
    conn: &mut Conn<'_>,
    attachment: AttachmentId,
    reason: &str,
) -> Result<(), StoreError> {
    let (path, ticket) = mark_attachment_failed(conn, attachment, reason).await?;
    set_ticket_state(
        conn,
        ticket,
        TicketState::Failed,
        Some(&format!("attachment {path}: {reason}")),
    )
    .await
}

/// An attachment that will not upload, its ticket's state left to the caller: its ticket.
pub async fn fail_attachment_only(
    conn: &mut Conn<'_>,
    attachment: AttachmentId,
    reason: &str,
) -> Result<TicketId, StoreError> {
    Ok(mark_attachment_failed(conn, attachment, reason).await?.1)
}

async fn mark_attachment_failed(
    conn: &mut Conn<'_>,
    attachment: AttachmentId,
    reason: &str,
) -> Result<(String, TicketId), StoreError> {
    Ok(on!(
        &mut *conn,
        sql!(
            "UPDATE attachments SET state = 'failed', last_error = $2 WHERE id = $1
             RETURNING path, ticket_id"
        ),
        |c, q| sqlx::query_as(q)
            .bind(attachment)
            .bind(reason)
            .fetch_one(c)
            .await
    )?)
}

/// A create was refused for these keys of the ticket, for a reason uploading may not fix:
/// note it on their files (kept across the one fresh upload they get). Their paths.
pub async fn note_refused<'c>(
    ex: impl Into<Ex<'c>>,
    ticket: TicketId,
    keys: &[String],
    reason: &str,
) -> Result<Vec<String>, StoreError> {
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    Ok(on!(
        ex.into(),
        sql!(
            "UPDATE attachments SET refused = $3
              WHERE ticket_id = $1 AND key {in_list $2}
             RETURNING path"
        ),
        |c, q| sqlx::query_scalar(q)
            .bind(ticket)
            .bind(queue::List(&keys))
            .bind(reason)
            .fetch_all(c)
            .await
    )?)
}

/// Leave these keys' files out of the ticket's create (`--skip-quarantined`), with why.
pub async fn skip_files<'c>(
    ex: impl Into<Ex<'c>>,
    ticket: TicketId,
    keys: &[String],
    reason: &str,
) -> Result<(), StoreError> {
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    on!(
        ex.into(),
        sql!("UPDATE attachments SET skipped = $3 WHERE ticket_id = $1 AND key {in_list $2}"),
        |c, q| sqlx::query(q)
            .bind(ticket)
            .bind(queue::List(&keys))
            .bind(reason)
            .execute(c)
            .await
            .map(drop)
    )?;
    Ok(())
}

/// The server's own error (JSON) of the ticket a job was for, or none: written when the job
/// fails the ticket, so that `--json` outputs keep the structured form.
pub async fn set_error_detail(
    conn: &mut Conn<'_>,
    attachment: Option<AttachmentId>,
    ticket: Option<TicketId>,
    detail: Option<String>,
) -> Result<(), StoreError> {
    on!(
        &mut *conn,
        sql!(
            "UPDATE tickets SET error_detail = $3
              WHERE id = COALESCE($2, (SELECT ticket_id FROM attachments WHERE id = $1))"
        ),
        |c, q| sqlx::query(q)
            .bind(attachment)
            .bind(ticket)
            .bind(detail)
            .execute(c)
            .await
            .map(drop)
    )?;
    Ok(())
}

/// What a create job needs to know.
#[derive(Debug, Clone)]
pub struct CreateWork {
    pub ticket: TicketRow,
    /// `(attachment, key, state)` in manifest order.
    pub attachments: Vec<(AttachmentId, Option<String>, AttachmentState)>,
    /// A create of this ticket was refused for one of its files before (a reason uploading
    /// again was tried for once).
    pub refused_before: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TicketRow {
    pub id: TicketId,
    pub batch_id: BatchId,
    pub project_id: ProjectId,
    #[sqlx(rename = "ref")]
    pub reference: String,
    pub line: i64,
    pub title: String,
    pub address: Option<String>,
    pub priority: Option<String>,
    pub contact_name: Option<String>,
    pub contact_email: Option<String>,
    pub state: TicketState,
    pub visibuild_id: Option<String>,
    pub create_sent_at: Option<Timestamp>,
    pub create_unanswered: bool,
    pub last_error: Option<String>,
}

pub async fn create_work(conn: &mut Conn<'_>, ticket: TicketId) -> Result<CreateWork, StoreError> {
    let ticket: TicketRow = on!(
        &mut *conn,
        sql!(
            "SELECT id, batch_id, project_id, ref, line, title, address, priority, contact_name,
                    contact_email, state, visibuild_id, create_sent_at, create_unanswered,
                    last_error
               FROM tickets WHERE id = $1"
        ),
        |c, q| sqlx::query_as(q).bind(ticket).fetch_one(c).await
    )?;
    let attachments = on!(
        &mut *conn,
        // A file left out (`--skip-quarantined`) is not the create's.
        sql!(
            "SELECT id, key, state FROM attachments WHERE ticket_id = $1 AND skipped IS NULL
              ORDER BY position"
        ),
        |c, q| sqlx::query_as(q).bind(ticket.id).fetch_all(c).await
    )?;
    let refused_before = on!(
        &mut *conn,
        sql!(
            "SELECT EXISTS (SELECT 1 FROM attachments WHERE ticket_id = $1 AND refused IS NOT NULL)"
        ),
        |c, q| sqlx::query_scalar(q).bind(ticket.id).fetch_one(c).await
    )?;
    Ok(CreateWork {
        ticket,
        attachments,
        refused_before,
    })
}

/// Durably note that a create request is about to leave, fenced by the job's claim.
pub async fn mark_create_sent(
    store: &Store,
    job: JobRef,
    ticket: TicketId,
) -> Result<(), StoreError> {
    mark_create(store, job, ticket, true).await
}

/// A definite answer came back for this claim's create request: it did not land, so the
/// next attempt may send again without review. Fenced: a stale claim clears nothing.
pub async fn mark_create_answered(
    store: &Store,
    job: JobRef,
    ticket: TicketId,
) -> Result<(), StoreError> {
    mark_create(store, job, ticket, false).await
}

async fn mark_create(
    store: &Store,
    job: JobRef,
    ticket: TicketId,
    leaving: bool,
) -> Result<(), StoreError> {
    // The claim is checked and held (its row locked) in the transaction that writes the
    // mark: a claim that took the job over first makes this fail, and one that comes after
    // waits for (Postgres: skips) the row until this commits — and then sees the mark.
    let mut tx = store.begin().await?;
    let mut conn = tx.conn();
    queue::hold(&mut conn, job).await?;
    on!(
        &mut conn,
        sql!(
            "UPDATE tickets
                SET create_unanswered = $2,
                    create_sent_at = CASE WHEN $2 THEN {now} ELSE create_sent_at END,
                    state = CASE WHEN $2 THEN 'creating'::ticket_state ELSE state END,
                    updated_at = {now}
              WHERE id = $1"
        ),
        |c, q| sqlx::query(q)
            .bind(ticket)
            .bind(leaving)
            .execute(c)
            .await
            .map(drop)
    )?;
    tx.commit().await?;
    Ok(())
}

/// Record that Visibuild created the ticket, whoever holds its job now: a fact about
/// Visibuild, not about a claim. For when [`finish_create`] could not be written.
pub async fn record_created<'c>(
    ex: impl Into<Ex<'c>>,
    ticket: TicketId,
    visibuild_id: Option<&str>,
) -> Result<(), StoreError> {
    on!(
        ex.into(),
        sql!(
            "UPDATE tickets SET state = 'created', visibuild_id = COALESCE($2, visibuild_id),
                    create_unanswered = false, updated_at = {now},
                    finished_at = COALESCE(finished_at, {now})
              WHERE id = $1"
        ),
        |c, q| sqlx::query(q)
            .bind(ticket)
            .bind(visibuild_id)
            .execute(c)
            .await
            .map(drop)
    )?;
    Ok(())
}

/// The ticket exists in Visibuild (its id, when the answer said it): complete the job.
pub async fn finish_create(
    conn: &mut Conn<'_>,
    job: JobRef,
    ticket: TicketId,
    visibuild_id: Option<&str>,
    note: Option<&str>,
) -> Result<(), StoreError> {
    queue::apply_one(&mut *conn, Transition::complete(job)).await?;
    on!(
        &mut *conn,
        sql!(
            "UPDATE tickets SET state = 'created', visibuild_id = COALESCE($2, visibuild_id),
                    last_error = $3, updated_at = {now}, finished_at = {now}
              WHERE id = $1"
        ),
        |c, q| sqlx::query(q)
            .bind(ticket)
            .bind(visibuild_id)
            .bind(note)
            .execute(c)
            .await
            .map(drop)
    )?;
    Ok(())
}

pub async fn set_ticket_state(
    conn: &mut Conn<'_>,
    ticket: TicketId,
    state: TicketState,
    error: Option<&str>,
) -> Result<(), StoreError> {
    on!(
        &mut *conn,
        sql!(
            "UPDATE tickets SET state = $2, last_error = COALESCE($3, last_error),
                    updated_at = {now},
                    finished_at = CASE WHEN $2 IN ('created', 'failed', 'needs_review')
                                       THEN {now} ELSE NULL END
              WHERE id = $1 AND (state <> 'created' OR $2 = 'created')"
        ),
        |c, q| sqlx::query(q)
            .bind(ticket)
            .bind(state)
            .bind(error)
            .execute(c)
            .await
            .map(drop)
    )?;
    if matches!(state, TicketState::Failed | TicketState::NeedsReview) {
        // A project's first ticket that ended uncreated hands the gate to the next one.
        super::gates::probe_ended(conn, ticket).await?;
    }
    Ok(())
}

/// Visibuild does not know some of our keys: those attachments go back to be uploaded
/// again (new keys), and the create job waits for them (blocked, fenced by its claim).
pub async fn reopen_uploads(
    conn: &mut Conn<'_>,
    create_job: JobRef,
    ticket: TicketId,
    attachments: &[AttachmentId],
    reason: &str,
) -> Result<(), StoreError> {
    queue::apply_one(&mut *conn, Transition::block(create_job, reason)).await?;
    let ids: Vec<uuid::Uuid> = attachments.iter().map(|a| a.0).collect();
    on!(
        &mut *conn,
        sql!(
            "UPDATE attachments SET state = 'pending', key = NULL, uploaded_at = NULL,
                    last_error = $2
              WHERE id {in_ids $1}"
        ),
        |c, q| sqlx::query(q)
            .bind(queue::List(&ids))
            .bind(reason)
            .execute(c)
            .await
            .map(drop)
    )?;
    // Their upload jobs run again, with at least one attempt left.
    let uploads: Vec<(JobId, i32, i32)> = on!(
        &mut *conn,
        sql!(
            "SELECT id, attempt, max_attempts FROM jobs
              WHERE kind = 'upload' AND target_id {in_ids $1}"
        ),
        |c, q| sqlx::query_as(q).bind(queue::List(&ids)).fetch_all(c).await
    )?;
    let again: Vec<Transition> = uploads
        .into_iter()
        .map(|(id, attempt, max)| Transition::revive(id, (max - attempt).max(1), false))
        .collect();
    queue::apply(&mut *conn, &again).await?;
    set_ticket_state(conn, ticket, TicketState::Pending, Some(reason)).await?;
    queue::notify(&mut *conn).await?;
    Ok(())
}
