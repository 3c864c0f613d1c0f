//! The import's own tables: batches, tickets, attachments and the hash cache, and the
//! transitions that move them together with their jobs (fan-in, re-upload, outcomes).

use super::StoreError;
use super::queue::{self, JobRef, NewJob, fenced};
use crate::domain::{
    AttachmentId, AttachmentState, BatchId, FileStamp, JobKind, JobState, Priority, ProjectId,
    TicketId, TicketState,
};
use crate::manifest::TicketSpec;
use sqlx::{PgConnection, PgExecutor};
use std::collections::HashMap;
use time::OffsetDateTime;

/// Tickets loaded per statement.
const LOAD_CHUNK: usize = 2_000;

/// A batch, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Batch {
    pub id: BatchId,
    pub name: String,
    pub manifest_path: String,
    pub files_root: String,
    pub created_at: OffsetDateTime,
}

/// Find or create the batch named `name`.
pub async fn upsert_batch<'e, E: PgExecutor<'e>>(
    ex: E,
    name: &str,
    manifest_path: &str,
    files_root: &str,
) -> Result<BatchId, StoreError> {
    let id = sqlx::query_scalar(
        "INSERT INTO batches (id, name, manifest_path, files_root) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET manifest_path = EXCLUDED.manifest_path
         RETURNING id",
    )
    .bind(BatchId::new())
    .bind(name)
    .bind(manifest_path)
    .bind(files_root)
    .fetch_one(ex)
    .await?;
    Ok(id)
}

pub async fn batches<'e, E: PgExecutor<'e>>(ex: E) -> Result<Vec<Batch>, StoreError> {
    Ok(
        sqlx::query_as("SELECT * FROM batches ORDER BY created_at, name")
            .fetch_all(ex)
            .await?,
    )
}

pub async fn batch_by_name<'e, E: PgExecutor<'e>>(
    ex: E,
    name: &str,
) -> Result<Option<Batch>, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM batches WHERE name = $1")
        .bind(name)
        .fetch_optional(ex)
        .await?)
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
    conn: &mut PgConnection,
    batch: BatchId,
    receipts: bool,
) -> Result<Result<(), bool>, StoreError> {
    let changed = sqlx::query(
        "UPDATE batches SET receipts = $2
          WHERE id = $1
            AND (receipts = $2 OR NOT EXISTS (SELECT 1 FROM tickets WHERE batch_id = $1))",
    )
    .bind(batch)
    .bind(receipts)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 1 {
        return Ok(Ok(()));
    }
    let chosen: bool = sqlx::query_scalar("SELECT receipts FROM batches WHERE id = $1")
        .bind(batch)
        .fetch_one(&mut *conn)
        .await?;
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
    conn: &mut PgConnection,
    batch: BatchId,
    tickets: &[TicketSpec],
    max_attempts: i32,
    source: &str,
    receipts: Option<&ReceiptSource>,
) -> Result<LoadReport, StoreError> {
    let mut report = LoadReport::default();
    let loaded_at = OffsetDateTime::now_utc();
    for chunk in tickets.chunks(LOAD_CHUNK) {
        let load = Load {
            batch,
            max_attempts,
            source,
            receipts,
            loaded_at,
        };
        load_chunk(conn, &load, chunk, &mut report).await?;
    }
    Ok(report)
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
fn upload_job(load: &Load<'_>, ticket: TicketId, attachment: AttachmentId) -> NewJob {
    NewJob {
        kind: JobKind::Upload,
        state: JobState::Available,
        batch_id: Some(load.batch),
        ticket_id: Some(ticket),
        attachment_id: Some(attachment),
        max_attempts: load.max_attempts,
        run_at: None,
    }
}

/// What every chunk of one load shares.
struct Load<'a> {
    batch: BatchId,
    max_attempts: i32,
    /// The manifest, for the notes of refs that changed since they were loaded.
    source: &'a str,
    receipts: Option<&'a ReceiptSource>,
    loaded_at: OffsetDateTime,
}

/// The loaded fields of a ticket, to name what a re-load changed.
#[derive(Debug, sqlx::FromRow)]
struct LoadedFields {
    title: String,
    address: Option<String>,
    priority: Option<String>,
    contact_name: Option<String>,
    contact_email: Option<String>,
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
    conn: &mut PgConnection,
    chunk: &[TicketSpec],
    changed: &[usize],
    unchanged: &[usize],
    source: &str,
    report: &mut LoadReport,
) -> Result<(), StoreError> {
    if !unchanged.is_empty() {
        sqlx::query(
            "UPDATE tickets t SET changed_since_load = NULL
               FROM UNNEST($1::uuid[], $2::text[]) AS k (project_id, ref)
              WHERE t.project_id = k.project_id AND t.ref = k.ref
                AND t.changed_since_load IS NOT NULL",
        )
        .bind(
            unchanged
                .iter()
                .map(|&i| chunk[i].project_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            unchanged
                .iter()
                .map(|&i| chunk[i].reference.as_str())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    for &i in changed {
        let spec = &chunk[i];
        let loaded: LoadedFields = sqlx::query_as(
            "SELECT t.title, t.address, t.priority, t.contact_name, t.contact_email,
                    ARRAY(SELECT a.path FROM attachments a WHERE a.ticket_id = t.id
                           ORDER BY a.position) AS paths
               FROM tickets t WHERE t.project_id = $1 AND t.ref = $2",
        )
        .bind(spec.project_id)
        .bind(&spec.reference)
        .fetch_one(&mut *conn)
        .await?;
        let mut fields = changed_fields(&loaded, spec);
        if fields.is_empty() {
            // The digest differs but no field we keep does (a project's spelling, say).
            fields.push("fields");
        }
        sqlx::query(
            "UPDATE tickets SET changed_since_load = $3, updated_at = now()
              WHERE project_id = $1 AND ref = $2",
        )
        .bind(spec.project_id)
        .bind(&spec.reference)
        .bind(format!("{} ({source}:{})", fields.join(", "), spec.line))
        .execute(&mut *conn)
        .await?;
        report.changed.push(ChangedRef {
            project_id: spec.project_id,
            reference: spec.reference.clone(),
            line: spec.line,
            fields,
        });
    }
    Ok(())
}

async fn load_chunk(
    conn: &mut PgConnection,
    load: &Load<'_>,
    chunk: &[TicketSpec],
    report: &mut LoadReport,
) -> Result<(), StoreError> {
    let (batch, max_attempts) = (load.batch, load.max_attempts);
    let projects: Vec<ProjectId> = chunk.iter().map(|t| t.project_id).collect();
    let refs: Vec<&str> = chunk.iter().map(|t| t.reference.as_str()).collect();
    let existing: Vec<(ProjectId, String, String)> = sqlx::query_as(
        "SELECT t.project_id, t.ref, t.fields_digest
           FROM tickets t
           JOIN UNNEST($1::uuid[], $2::text[]) AS k (project_id, ref)
             ON t.project_id = k.project_id AND t.ref = k.ref",
    )
    .bind(&projects)
    .bind(&refs)
    .fetch_all(&mut *conn)
    .await?;
    let existing: HashMap<(ProjectId, &str), &str> = existing
        .iter()
        .map(|(p, r, d)| ((*p, r.as_str()), d.as_str()))
        .collect();

    let mut fresh: Vec<(TicketId, &TicketSpec, String)> = Vec::new();
    let (mut changed, mut unchanged) = (Vec::new(), Vec::new());
    for (i, spec) in chunk.iter().enumerate() {
        let digest = spec.fields_digest();
        match existing.get(&(spec.project_id, spec.reference.as_str())) {
            Some(old) if *old == digest => unchanged.push(i),
            Some(_) => changed.push(i),
            None => fresh.push((TicketId::new(), spec, digest)),
        }
    }
    report.unchanged += unchanged.len() as u64;
    if !(changed.is_empty() && unchanged.is_empty()) {
        note_changes(conn, chunk, &changed, &unchanged, load.source, report).await?;
    }
    if fresh.is_empty() {
        return Ok(());
    }

    let inserted: Vec<TicketId> = sqlx::query_scalar(
        "INSERT INTO tickets (id, batch_id, project_id, ref, line, title, address, priority,
                              contact_name, contact_email, fields_digest)
         SELECT t.id, $1, t.project_id, t.ref, t.line, t.title, t.address, t.priority,
                t.contact_name, t.contact_email, t.digest
           FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::bigint[], $6::text[], $7::text[],
                       $8::text[], $9::text[], $10::text[], $11::text[])
             AS t (id, project_id, ref, line, title, address, priority, contact_name,
                   contact_email, digest)
         ON CONFLICT (project_id, ref) DO NOTHING
         RETURNING id",
    )
    .bind(batch)
    .bind(fresh.iter().map(|f| f.0).collect::<Vec<_>>())
    .bind(fresh.iter().map(|f| f.1.project_id).collect::<Vec<_>>())
    .bind(
        fresh
            .iter()
            .map(|f| f.1.reference.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(fresh.iter().map(|f| f.1.line as i64).collect::<Vec<_>>())
    .bind(fresh.iter().map(|f| f.1.title.as_str()).collect::<Vec<_>>())
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
    .bind(fresh.iter().map(|f| f.2.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
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
            jobs.push(upload_job(load, *ticket, id));
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
            jobs.push(upload_job(load, *ticket, id));
        }
        jobs.push(NewJob {
            kind: JobKind::CreateTicket,
            state: if has_files {
                JobState::Blocked
            } else {
                JobState::Available
            },
            batch_id: Some(batch),
            ticket_id: Some(*ticket),
            attachment_id: None,
            max_attempts,
            run_at: None,
        });
    }
    if !rows.ids.is_empty() {
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
        .execute(&mut *conn)
        .await?;
        report.attachments_added += rows.ids.len() as u64;
    }
    queue::enqueue(&mut *conn, &jobs).await?;
    Ok(())
}

/// What an upload job needs to know.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UploadWork {
    pub attachment_id: AttachmentId,
    pub ticket_id: TicketId,
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

pub async fn upload_work<'e, E: PgExecutor<'e>>(
    ex: E,
    attachment: AttachmentId,
) -> Result<UploadWork, StoreError> {
    Ok(sqlx::query_as(
        "SELECT a.id AS attachment_id, a.ticket_id, t.ref AS ticket_ref, a.resolved_path,
                COALESCE(a.root, '') AS files_root, a.filename, a.content_type, a.size, a.mtime_ns, a.inline_content,
                a.state,
                h.size AS cached_size, h.mtime_ns AS cached_mtime_ns, h.md5 AS cached_md5
           FROM attachments a JOIN tickets t ON t.id = a.ticket_id
           LEFT JOIN file_hashes h ON h.resolved_path = a.resolved_path
          WHERE a.id = $1",
    )
    .bind(attachment)
    .fetch_one(ex)
    .await?)
}

/// What an upload left in S3: its key, and the bytes it carried (also cached by path).
#[derive(Debug, Clone, Copy)]
pub struct Uploaded<'a> {
    pub key: &'a str,
    pub resolved_path: &'a str,
    pub size: i64,
    pub mtime_ns: i64,
    pub md5: &'a str,
    /// How the file differed from when it was last read, if it did.
    pub change: Option<&'a str>,
}

/// The attachment is in S3: mark it, complete its job, and — if it was the ticket's last —
/// make the ticket's create job runnable, all in one transaction. The ticket row is locked
/// first so that two uploads finishing together see each other (neither both nor neither).
pub async fn finish_upload(
    conn: &mut PgConnection,
    job: JobRef,
    attachment: AttachmentId,
    ticket: TicketId,
    uploaded: Option<Uploaded<'_>>,
) -> Result<bool, StoreError> {
    // Losing this commit in a database crash costs one repeated upload (a new key; the old
    // object is never linked), never a duplicate ticket: no need to wait for the disk.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT 1 FROM tickets WHERE id = $1 FOR UPDATE")
        .bind(ticket)
        .execute(&mut *conn)
        .await?;
    queue::complete(&mut *conn, job).await?;
    if let Some(u) = uploaded {
        sqlx::query(
            "UPDATE attachments SET state = 'uploaded', uploaded_at = now(), last_error = NULL,
                    key = $2, size = $3, md5 = $4, mtime_ns = $5,
                    change_note = COALESCE($6, change_note)
              WHERE id = $1",
        )
        .bind(attachment)
        .bind(u.key)
        .bind(u.size)
        .bind(u.md5)
        .bind(u.mtime_ns)
        .bind(u.change)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO file_hashes (resolved_path, size, mtime_ns, md5)
             SELECT $1, $2, $3, $4 WHERE $1 <> ''
             ON CONFLICT (resolved_path) DO UPDATE
                SET size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, md5 = EXCLUDED.md5",
        )
        .bind(u.resolved_path)
        .bind(u.size)
        .bind(u.mtime_ns)
        .bind(u.md5)
        .execute(&mut *conn)
        .await?;
    }
    let unblocked = sqlx::query(
        "UPDATE jobs SET state = 'available', run_at = now(), updated_at = now()
          WHERE kind = 'create_ticket' AND ticket_id = $1 AND state = 'blocked'
            AND NOT EXISTS (SELECT 1 FROM attachments
                             WHERE ticket_id = $1 AND state <> 'uploaded')",
    )
    .bind(ticket)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if unblocked {
        queue::notify(&mut *conn).await?;
    }
    Ok(unblocked)
}

/// An attachment that will not upload: it and its ticket are failed, with the reason.
pub async fn fail_attachment(
    conn: &mut PgConnection,
    attachment: AttachmentId,
    ticket: TicketId,
    reason: &str,
) -> Result<(), StoreError> {
    let path: String = sqlx::query_scalar(
        "UPDATE attachments SET state = 'failed', last_error = $2 WHERE id = $1 RETURNING path",
    )
    .bind(attachment)
    .bind(reason)
    .fetch_one(&mut *conn)
    .await?;
    set_ticket_state(
        &mut *conn,
        ticket,
        TicketState::Failed,
        Some(&format!("attachment {path}: {reason}")),
    )
    .await
}

/// What a create job needs to know.
#[derive(Debug, Clone)]
pub struct CreateWork {
    pub ticket: TicketRow,
    /// `(attachment, key, state)` in manifest order.
    pub attachments: Vec<(AttachmentId, Option<String>, AttachmentState)>,
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
    pub create_sent_at: Option<OffsetDateTime>,
    pub create_unanswered: bool,
    pub last_error: Option<String>,
}

pub async fn create_work(
    conn: &mut PgConnection,
    ticket: TicketId,
) -> Result<CreateWork, StoreError> {
    let ticket: TicketRow = sqlx::query_as(
        "SELECT id, batch_id, project_id, ref, line, title, address, priority, contact_name,
                contact_email, state, visibuild_id, create_sent_at, create_unanswered, last_error
           FROM tickets WHERE id = $1",
    )
    .bind(ticket)
    .fetch_one(&mut *conn)
    .await?;
    let attachments = sqlx::query_as(
        "SELECT id, key, state FROM attachments WHERE ticket_id = $1 ORDER BY position",
    )
    .bind(ticket.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(CreateWork {
        ticket,
        attachments,
    })
}

/// Durably note that a create request is about to leave, fenced by the job's claim.
pub async fn mark_create_sent<'e, E: PgExecutor<'e>>(
    ex: E,
    job: JobRef,
    ticket: TicketId,
) -> Result<(), StoreError> {
    mark_create(ex, job, ticket, true).await
}

/// A definite answer came back for this claim's create request: it did not land, so the
/// next attempt may send again without review. Fenced: a stale claim clears nothing.
pub async fn mark_create_answered<'e, E: PgExecutor<'e>>(
    ex: E,
    job: JobRef,
    ticket: TicketId,
) -> Result<(), StoreError> {
    mark_create(ex, job, ticket, false).await
}

async fn mark_create<'e, E: PgExecutor<'e>>(
    ex: E,
    job: JobRef,
    ticket: TicketId,
    leaving: bool,
) -> Result<(), StoreError> {
    // The job row is *updated* (so locked) rather than merely read: a claim that took the
    // job over first makes this write nothing, and a claim that comes after waits for (SKIP
    // LOCKED: skips) the row until this commits — and then sees the mark.
    let done = sqlx::query(
        "WITH held AS (
             UPDATE jobs SET updated_at = now()
              WHERE id = $1 AND attempt = $2 AND state = 'running' AND locked_until > now()
             RETURNING id
         )
         UPDATE tickets
            SET create_unanswered = $4,
                create_sent_at = CASE WHEN $4 THEN now() ELSE create_sent_at END,
                state = CASE WHEN $4 THEN 'creating'::ticket_state ELSE state END,
                updated_at = now()
          WHERE id = $3 AND EXISTS (SELECT 1 FROM held)",
    )
    .bind(job.id)
    .bind(job.attempt)
    .bind(ticket)
    .bind(leaving)
    .execute(ex)
    .await?;
    fenced(done.rows_affected(), job)
}

/// Record that Visibuild created the ticket, whoever holds its job now: a fact about
/// Visibuild, not about a claim. For when [`finish_create`] could not be written.
pub async fn record_created<'e, E: PgExecutor<'e>>(
    ex: E,
    ticket: TicketId,
    visibuild_id: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tickets SET state = 'created', visibuild_id = COALESCE($2, visibuild_id),
                create_unanswered = false, updated_at = now(),
                finished_at = COALESCE(finished_at, now())
          WHERE id = $1",
    )
    .bind(ticket)
    .bind(visibuild_id)
    .execute(ex)
    .await?;
    Ok(())
}

/// The ticket exists in Visibuild (its id, when the answer said it): complete the job.
pub async fn finish_create(
    conn: &mut PgConnection,
    job: JobRef,
    ticket: TicketId,
    visibuild_id: Option<&str>,
    note: Option<&str>,
) -> Result<(), StoreError> {
    queue::complete(&mut *conn, job).await?;
    sqlx::query(
        "UPDATE tickets SET state = 'created', visibuild_id = COALESCE($2, visibuild_id),
                last_error = $3, updated_at = now(), finished_at = now()
          WHERE id = $1",
    )
    .bind(ticket)
    .bind(visibuild_id)
    .bind(note)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn set_ticket_state(
    conn: &mut PgConnection,
    ticket: TicketId,
    state: TicketState,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tickets SET state = $2, last_error = COALESCE($3, last_error), updated_at = now(),
                finished_at = CASE WHEN $2 IN ('created', 'failed', 'needs_review')
                                   THEN now() ELSE NULL END
          WHERE id = $1 AND (state <> 'created' OR $2 = 'created')",
    )
    .bind(ticket)
    .bind(state)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Visibuild does not know some of our keys: those attachments go back to be uploaded
/// again (new keys), and the create job waits for them (blocked, fenced by its claim).
pub async fn reopen_uploads(
    conn: &mut PgConnection,
    create_job: JobRef,
    ticket: TicketId,
    attachments: &[AttachmentId],
    reason: &str,
) -> Result<(), StoreError> {
    let blocked = sqlx::query(
        "UPDATE jobs SET state = 'blocked', locked_until = NULL, locked_by = NULL,
                max_attempts = GREATEST(max_attempts, attempt + 1),
                last_error = $3, updated_at = now()
          WHERE id = $1 AND attempt = $2 AND state = 'running'",
    )
    .bind(create_job.id)
    .bind(create_job.attempt)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    fenced(blocked.rows_affected(), create_job)?;
    sqlx::query(
        "UPDATE attachments SET state = 'pending', key = NULL, uploaded_at = NULL, last_error = $2
          WHERE id = ANY($1)",
    )
    .bind(attachments)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE jobs SET state = 'available', run_at = now(), locked_until = NULL,
                locked_by = NULL, max_attempts = GREATEST(max_attempts, attempt + 1),
                finished_at = NULL, updated_at = now()
          WHERE kind = 'upload' AND attachment_id = ANY($1)",
    )
    .bind(attachments)
    .execute(&mut *conn)
    .await?;
    set_ticket_state(&mut *conn, ticket, TicketState::Pending, Some(reason)).await?;
    queue::notify(&mut *conn).await
}
