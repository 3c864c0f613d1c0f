//! `check` and `enqueue` on a manifest of any size in flat memory: rows are parsed on a
//! blocking thread and written a chunk at a time to staging (`store::staging`), the rules
//! between rows are answered there, and tickets come back a page at a time in manifest order.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, Postgres, Sqlite, SqliteConnection, Transaction};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::domain::{BatchId, Priority, ProjectId};
use crate::manifest::merge::{self, Phase, TicketRows};
use crate::manifest::parse::{Parsed, RowSink};
use crate::manifest::{
    AttachmentSpec, Checked, ManifestError, ManifestOptions, Opened, Problem, Row, TicketSpec,
};
use crate::store::staging::{self, Chunk, PageRow, StagedProblem};
use crate::store::tickets::{self, ChangedRef, ReceiptSource, SortedPage};
use crate::store::{Conn, Store, StoreError};

/// Rows per staging write, lines per page of tickets read back, problems per page reported:
/// what bounds memory (with the 4,096 file paths the parser remembers).
pub const DEFAULT_CHUNK: usize = 2_000;

/// Chunks on their way from the parser to staging: the parser reads ahead by this many.
const CHUNKS_IN_FLIGHT: usize = 2;

/// How a staging step failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The parser's thread died (a bug: it reports problems, it does not fail).
    #[error("the manifest reader stopped: {0}")]
    Reader(String),
}

impl From<sqlx::Error> for IngestError {
    fn from(e: sqlx::Error) -> Self {
        IngestError::Store(StoreError::Sqlx(e))
    }
}

/// A connection of its own for one check or load, closed (not returned to the pool) when
/// dropped: the staging's TEMP tables go with it, an unfinished transaction rolls back.
pub enum Session {
    /// The store's (`enqueue`).
    Postgres(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
    /// A private SQLite database (`check`): nothing is written anywhere else.
    Private(SqliteConnection),
}

impl Session {
    /// A connection of `store`'s.
    pub async fn of(store: &Store) -> Result<Self, StoreError> {
        Ok(match store {
            Store::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                conn.close_on_drop();
                Session::Postgres(conn)
            }
            Store::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                conn.close_on_drop();
                let mut staging = Session::Sqlite(conn);
                staging.tune_sqlite().await?;
                staging
            }
        })
    }

    /// A private staging database for `check`: an empty in-memory main database, the
    /// staging tables TEMP ones, which SQLite keeps in a temporary file (in `TMPDIR`,
    /// deleted when the connection closes, or by the system if the process dies).
    pub async fn private() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        let conn = SqliteConnection::connect_with(&options).await?;
        let mut staging = Session::Private(conn);
        staging.tune_sqlite().await?;
        Ok(staging)
    }

    /// TEMP tables in a file (whatever the build's default), with a bounded cache.
    async fn tune_sqlite(&mut self) -> Result<(), StoreError> {
        if let Conn::Sqlite(c) = self.conn() {
            sqlx::raw_sql("PRAGMA temp_store = FILE; PRAGMA temp.cache_size = -4096;")
                .execute(&mut *c)
                .await?;
        }
        Ok(())
    }

    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Session::Postgres(c) => Conn::Postgres(c),
            Session::Sqlite(c) => Conn::Sqlite(c),
            Session::Private(c) => Conn::Sqlite(c),
        }
    }

    /// A transaction on this connection; in SQLite it takes the store's write lock at once.
    pub async fn begin(&mut self) -> Result<StagingTx<'_>, StoreError> {
        Ok(match self {
            Session::Postgres(c) => StagingTx::Postgres(c.begin().await?),
            Session::Sqlite(c) => StagingTx::Sqlite(c.begin_with("BEGIN IMMEDIATE").await?),
            Session::Private(c) => StagingTx::Sqlite(c.begin().await?),
        })
    }

    /// Closes the connection, and its staging with it.
    pub async fn close(self) {
        let _ = match self {
            Session::Postgres(c) => c.close().await,
            Session::Sqlite(c) => c.close().await,
            Session::Private(c) => c.close().await,
        };
    }
}

/// A transaction on the staging connection: the load, and the staging rows it writes (its
/// problems, its changed refs) with it. Rolled back if dropped.
pub enum StagingTx<'c> {
    Postgres(Transaction<'c, Postgres>),
    Sqlite(Transaction<'c, Sqlite>),
}

impl StagingTx<'_> {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            StagingTx::Postgres(tx) => Conn::Postgres(tx),
            StagingTx::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            StagingTx::Postgres(tx) => tx.commit().await?,
            StagingTx::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        match self {
            StagingTx::Postgres(tx) => tx.rollback().await?,
            StagingTx::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

/// A manifest in staging: what the pass over its rows left for the steps after it, and
/// where the pages of tickets stand.
#[derive(Debug)]
pub struct Staged {
    file: PathBuf,
    files_root: PathBuf,
    chunk: usize,
    header_broken: bool,
    /// The next problem's place among those of its line and phase.
    next_seq: i64,
    /// Where the next page of tickets starts (a page is `chunk` lines).
    next_page: i64,
    /// The last line of the manifest.
    last_line: i64,
}

impl Staged {
    pub fn files_root(&self) -> &Path {
        &self.files_root
    }

    /// Whether any problem was found so far.
    pub fn problems_found(&self) -> bool {
        self.next_seq > 0
    }
}

/// Parses `manifest` into fresh staging on `conn`, and applies the rules of continuation
/// rows (a blank `project_id` joins its ref's first project; none, or several, is a problem).
/// `chunk`: rows per write (and per page later).
pub async fn stage(
    conn: &mut Conn<'_>,
    manifest: Opened,
    chunk: usize,
) -> Result<Staged, IngestError> {
    let chunk = chunk.max(1);
    let started = std::time::Instant::now();
    staging::create(conn).await?;
    let file = manifest.path().to_owned();
    let files_root = manifest.files_root().to_owned();
    let (sender, mut chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let parser = tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSink {
            sender,
            chunk: Chunk::default(),
            weight: 0,
            limit: chunk,
            next_seq: 0,
            closed: false,
        };
        let parsed = manifest.parse(&mut sink);
        sink.flush();
        (parsed, sink.next_seq)
    });
    let mut written = Ok(());
    while let Some(next) = chunks.recv().await {
        written = staging::append(conn, &next).await;
        if written.is_err() {
            break; // the parser sees the channel closed and stops
        }
    }
    drop(chunks);
    let joined = parser.await;
    written?;
    let (parsed, next_seq): (Parsed, i64) =
        joined.map_err(|e| IngestError::Reader(e.to_string()))?;
    tracing::debug!(elapsed = ?started.elapsed(), "manifest rows staged");
    let linked = staging::index(conn).await?;
    tracing::debug!(elapsed = ?started.elapsed(), linked, "staging indexed");
    let mut staged = Staged {
        file,
        files_root,
        chunk,
        header_broken: parsed.header_broken,
        next_seq,
        next_page: 0,
        last_line: parsed.last_line as i64,
    };
    if linked {
        continuations(conn, &mut staged).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "continuation rows checked");
    }
    Ok(staged)
}

/// Reports the continuation rows that cannot join one ticket: the ref has no project (a
/// missing value), or several (which one is meant? the ref is left out).
async fn continuations(conn: &mut Conn<'_>, staged: &mut Staged) -> Result<(), StoreError> {
    let limit = staged.chunk as i64;
    let mut after = i64::MIN;
    loop {
        let page = staging::continuations(conn, after, limit).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.line;
        let mut problems = Vec::with_capacity(page.len());
        let mut poisoned = Vec::new();
        for row in page {
            let message = match (row.first_project, row.second_project) {
                (Some(first), Some(second)) => {
                    let (projects, more) = match row.projects {
                        2 => ("two".to_owned(), ""),
                        count => (count.to_string(), ", ..."),
                    };
                    poisoned.push((row.line, row.reference.clone()));
                    format!(
                        "blank, but ref {:?} exists under {projects} projects ({first} on line \
                         {}, {second} on line {}{more}); give the project_id",
                        row.reference,
                        row.first_line.unwrap_or_default(),
                        row.second_line.unwrap_or_default()
                    )
                }
                _ => crate::manifest::parse::MISSING.to_owned(),
            };
            problems.push(StagedProblem {
                line: row.line,
                phase: Phase::Continuation as i16,
                seq: staged.next_seq,
                field: Some("project_id".to_owned()),
                message,
                reference: Some(row.reference),
            });
            staged.next_seq += 1;
        }
        staging::add_problems(conn, &problems).await?;
        staging::poison(conn, &poisoned).await?;
    }
}

/// Where the parser's rows go: chunks to the staging writer, through a bounded channel.
struct ChunkSink {
    sender: mpsc::Sender<Chunk>,
    chunk: Chunk,
    /// Rows, files and problems in `chunk`.
    weight: usize,
    limit: usize,
    next_seq: i64,
    /// The writer stopped (it failed): the rest is not worth reading.
    closed: bool,
}

impl ChunkSink {
    fn add(&mut self, weight: usize) {
        self.weight += weight;
        if self.weight >= self.limit {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.weight = 0;
        if self.chunk.is_empty() || self.closed {
            return;
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.closed = self.sender.blocking_send(chunk).is_err();
    }
}

impl RowSink for ChunkSink {
    fn row(&mut self, row: Row) {
        let weight = 1 + row.attachments.len();
        self.chunk.rows.push(row);
        self.add(weight);
    }

    fn problem(&mut self, problem: Problem) {
        self.chunk.problems.push(StagedProblem {
            line: problem.line as i64,
            phase: Phase::Row as i16,
            seq: self.next_seq,
            field: problem.field,
            message: problem.message,
            reference: problem.reference,
        });
        self.next_seq += 1;
        self.add(1);
    }

    fn poison(&mut self, line: u64, reference: String) {
        self.chunk.poisoned.push((line as i64, reference));
        self.add(1);
    }

    fn stopped(&self) -> bool {
        self.closed
    }
}

/// The next page of valid tickets, in manifest order (by first line); `None` after the
/// last. The page's problems (rows that disagree, a ticket without a title) and the tickets
/// it leaves out are written to staging.
pub async fn next_page(
    conn: &mut Conn<'_>,
    staged: &mut Staged,
) -> Result<Option<Vec<TicketSpec>>, StoreError> {
    let from = staged.next_page;
    if from > staged.last_line {
        return Ok(None);
    }
    let to = from.saturating_add(staged.chunk as i64);
    let rows = staging::page(conn, from, to).await?;
    staged.next_page = to;
    let mut valid = Vec::new();
    let mut problems = Vec::new();
    let mut skipped = Vec::new();
    for ticket in group(rows) {
        let (line, reference) = (ticket.line, ticket.reference.clone());
        let merged = merge::merge(&staged.file, ticket, staged.header_broken);
        for (phase, problem) in merged.problems {
            problems.push(StagedProblem {
                line: problem.line as i64,
                phase: phase as i16,
                seq: staged.next_seq,
                field: problem.field,
                message: problem.message,
                reference: problem.reference,
            });
            staged.next_seq += 1;
        }
        match merged.ticket {
            Some(spec) => valid.push(spec),
            None => skipped.push((line as i64, reference)),
        }
    }
    staging::add_problems(conn, &problems).await?;
    staging::add_skipped(conn, &skipped).await?;
    Ok(Some(valid))
}

/// A page's rows (one per file) into tickets: consecutive rows of one first line are one
/// ticket, consecutive rows of one line one manifest row.
fn group(rows: Vec<PageRow>) -> Vec<TicketRows> {
    let mut tickets: Vec<TicketRows> = Vec::new();
    for page_row in rows {
        let (ticket_line, line) = (page_row.ticket_line as u64, page_row.line as u64);
        let file = page_row.file.map(|f| AttachmentSpec {
            line,
            path: Arc::from(f.path),
            resolved: path_of(f.resolved),
            confine: path_of(f.root),
            filename: Arc::from(f.filename),
            content_type: Arc::from(f.content_type),
            size: f.size as u64,
            mtime_ns: f.mtime_ns,
        });
        if tickets.last().is_none_or(|t| t.line != ticket_line) {
            tickets.push(TicketRows {
                line: ticket_line,
                reference: page_row.reference.clone(),
                project_id: page_row.project_id,
                poisoned: page_row.poisoned,
                rows: Vec::new(),
            });
        }
        let Some(ticket) = tickets.last_mut() else {
            continue;
        };
        match ticket.rows.last_mut() {
            Some(row) if row.line == line => row.attachments.extend(file),
            _ => ticket.rows.push(Row {
                line,
                reference: page_row.reference,
                project_id: page_row.project_id,
                title: page_row.title,
                address: page_row.address,
                // Staged from a `Priority`, so it reads back as one.
                priority: page_row
                    .priority
                    .as_deref()
                    .and_then(|p| Priority::from_str(p).ok()),
                contact_name: page_row.contact_name,
                contact_email: page_row.contact_email,
                attachments: file.into_iter().collect(),
                bad: page_row.bad,
                title_unreadable: page_row.title_unreadable,
            }),
        }
    }
    tickets
}

/// A path staged as its bytes.
fn path_of(bytes: Vec<u8>) -> Arc<Path> {
    Path::new(OsStr::from_bytes(&bytes)).into()
}

/// What a manifest holds, counted as its pages went by.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub valid: u64,
    pub files: u64,
    pub bytes: u64,
    pub problems: u64,
    /// Refs of tickets left out.
    pub skipped: u64,
}

impl Counts {
    fn add(&mut self, tickets: &[TicketSpec]) {
        self.valid += tickets.len() as u64;
        for ticket in tickets {
            self.files += ticket.attachments.len() as u64;
            self.bytes += ticket.attachments.iter().map(|a| a.size).sum::<u64>();
        }
    }

    pub fn is_clean(&self) -> bool {
        self.problems == 0
    }

    /// `2 tickets (1 valid, 1 with problems), 1 file, 4.0 KiB; 1 problem`.
    pub fn summary(&self) -> String {
        crate::manifest::summary(
            self.valid,
            self.skipped,
            self.files,
            self.bytes,
            self.problems,
        )
    }
}

/// Every problem is in: sorts them (and the skipped refs) for reading, and counts them.
async fn seal(conn: &mut Conn<'_>, counts: &mut Counts) -> Result<(), StoreError> {
    let (problems, skipped) = staging::seal(conn).await?;
    counts.problems = problems as u64;
    counts.skipped = skipped as u64;
    Ok(())
}

/// Hands every staged problem to `each`, in report order (line, then as found), a page
/// at a time.
pub async fn each_problem(
    conn: &mut Conn<'_>,
    staged: &Staged,
    mut each: impl FnMut(Problem),
) -> Result<(), StoreError> {
    let mut after = (i64::MIN, 0, 0);
    loop {
        let page = staging::problems(conn, after, staged.chunk as i64).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = (last.line, last.phase, last.seq);
        for p in page {
            each(Problem {
                file: staged.file.clone(),
                line: p.line as u64,
                field: p.field,
                message: p.message,
                reference: p.reference,
            });
        }
    }
}

/// Hands the refs of the tickets left out to `each`, in the order of their first lines, a
/// page at a time; stops early when `each` says so.
pub async fn each_skipped(
    conn: &mut Conn<'_>,
    staged: &Staged,
    mut each: impl FnMut(String) -> bool,
) -> Result<(), StoreError> {
    let mut after = (i64::MIN, String::new());
    loop {
        let page = staging::skipped(conn, (after.0, &after.1), staged.chunk as i64).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.clone();
        for (_, reference) in page {
            if !each(reference) {
                return Ok(());
            }
        }
    }
}

/// `check`: stages the manifest in a private SQLite database, hands every problem to
/// `each_problem` in order, and counts what it holds. Touches nothing else.
pub async fn check(
    manifest: Opened,
    chunk: usize,
    each_problem: impl FnMut(Problem),
) -> Result<Counts, IngestError> {
    check_each(manifest, chunk, each_problem, |_| {}).await
}

/// [`check`], also handing every valid ticket to `each_ticket` in manifest order (for
/// `check --preview`), a page at a time.
pub async fn check_each(
    manifest: Opened,
    chunk: usize,
    each_problem: impl FnMut(Problem),
    mut each_ticket: impl FnMut(&TicketSpec),
) -> Result<Counts, IngestError> {
    let mut connection = Session::private().await?;
    let mut conn = connection.conn();
    let mut staged = stage(&mut conn, manifest, chunk).await?;
    let mut counts = Counts::default();
    while let Some(page) = next_page(&mut conn, &mut staged).await? {
        page.iter().for_each(&mut each_ticket);
        counts.add(&page);
    }
    seal(&mut conn, &mut counts).await?;
    self::each_problem(&mut conn, &staged, each_problem).await?;
    connection.close().await;
    Ok(counts)
}

/// Reads and checks a manifest and every file it names, in one pass: the valid tickets
/// and every problem, all in memory (for tests and tools; the commands stream instead).
/// The rules between rows are answered in a private staging file, as `check` answers
/// them. Touches nothing but reads. Callers may be sync or inside a runtime of their own:
/// it runs on a thread and a runtime of its own.
pub fn check_all(manifest: &Path, opts: &ManifestOptions) -> Result<Checked, ManifestError> {
    let opened = crate::manifest::open(manifest, opts)?;
    let staged = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(check_collected(opened, DEFAULT_CHUNK))
            })
            .join()
    });
    let staged = match staged {
        Ok(staged) => staged,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    staged.map_err(|source| ManifestError::Staging {
        path: manifest.to_owned(),
        source,
    })
}

/// [`check_all`]: as [`check`], every ticket, problem and skipped ref kept in
/// memory (for tests and tools).
pub async fn check_collected(manifest: Opened, chunk: usize) -> Result<Checked, anyhow::Error> {
    let files_root = manifest.files_root().to_owned();
    let mut connection = Session::private().await?;
    let mut conn = connection.conn();
    let mut staged = stage(&mut conn, manifest, chunk).await?;
    let mut tickets = Vec::new();
    while let Some(page) = next_page(&mut conn, &mut staged).await? {
        tickets.extend(page);
    }
    seal(&mut conn, &mut Counts::default()).await?;
    let mut problems = Vec::new();
    each_problem(&mut conn, &staged, |p| problems.push(p)).await?;
    let mut skipped_refs = Vec::new();
    each_skipped(&mut conn, &staged, |r| {
        skipped_refs.push(r);
        true
    })
    .await?;
    connection.close().await;
    Ok(Checked {
        tickets,
        problems,
        skipped_refs,
        files_root,
    })
}

/// How to load a staged manifest.
#[derive(Debug, Clone)]
pub struct Load {
    pub batch: String,
    /// The manifest as named to the user (in change notes).
    pub source: String,
    pub skip_invalid: bool,
    pub max_attempts: i32,
    pub receipts: Option<ReceiptSource>,
}

/// What a committed load added.
#[derive(Debug, Clone, Copy, Default)]
pub struct Added {
    pub tickets: u64,
    pub files: u64,
    /// Tickets already loaded, as they are.
    pub unchanged: u64,
    /// Tickets already loaded whose fields differ now: kept as they were, reported.
    pub changed: u64,
}

/// What a load did, or why it did not.
#[derive(Debug)]
pub enum Loaded {
    /// Committed.
    Done {
        batch: BatchId,
        added: Added,
        counts: Counts,
    },
    /// The manifest has problems and `skip_invalid` is off: nothing was loaded.
    Refused { counts: Counts },
    /// The batch chose the other way of receipts on its first load: nothing was loaded.
    ReceiptsDiffer { batch_has: bool },
}

/// A ref loaded before whose fields differ in this manifest.
#[derive(Debug, Clone)]
pub struct Changed {
    pub project_id: ProjectId,
    pub reference: String,
    pub line: u64,
    /// `title`, `attachments`, …
    pub fields: Vec<String>,
}

/// What a load tells its user as it goes, in this order: the problems and the refs left
/// out (before the commit), then the changed refs (after it).
pub trait LoadOutput {
    fn problem(&mut self, problem: Problem);
    /// Called once when tickets were left out: how many, and the first [`SKIPPED_SHOWN`]
    /// refs (in line order).
    fn skipped(&mut self, total: u64, refs: Vec<String>);
    fn changed(&mut self, changed: Changed);
}

/// Refs named in the "skipped" line; the rest are counted (each has its problem lines).
pub const SKIPPED_SHOWN: usize = 100;

/// `enqueue`: stages the manifest on a connection of `store`'s, then loads its valid tickets
/// in one transaction on a second connection — none of them if there is any problem, unless
/// `skip_invalid`. The pages are read (and merged) on the first while the second writes the
/// page before. A load cut short (an error, a signal, a lost connection) rolls back: nothing
/// of it is seen, and its staging goes with its connection.
pub async fn enqueue(
    store: &Store,
    manifest: Opened,
    load: &Load,
    chunk: usize,
    out: &mut impl LoadOutput,
) -> Result<Loaded, IngestError> {
    let mut staging = Session::of(store).await?;
    let mut staged = stage(&mut staging.conn(), manifest, chunk).await?;
    if staged.problems_found() && !load.skip_invalid {
        // Nothing will be loaded: the pages are read for their problems only, outside any
        // transaction (an embedded store's writers are not held up meanwhile).
        let mut conn = staging.conn();
        let mut counts = Counts::default();
        while let Some(page) = next_page(&mut conn, &mut staged).await? {
            counts.add(&page);
        }
        seal(&mut conn, &mut counts).await?;
        each_problem(&mut conn, &staged, |p| out.problem(p)).await?;
        staging.close().await;
        return Ok(Loaded::Refused { counts });
    }

    let mut loader = Session::of(store).await?;
    let mut tx = loader.begin().await?;
    let mut conn = tx.conn();
    let files_root = staged.files_root.to_string_lossy().into_owned();
    let batch = tickets::upsert_batch(&mut conn, &load.batch, &load.source, &files_root).await?;
    let receipts = tickets::set_batch_receipts(&mut conn, batch, load.receipts.is_some()).await?;
    let (pages, to_load) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (changed, to_note) = mpsc::unbounded_channel();
    // The reader is a task of its own, so that reading, merging and sorting a page (on one
    // connection) run beside the writing of the page before (on the other).
    let reader = tokio::spawn(read_pages(
        staging,
        staged,
        receipts.is_ok(),
        load.skip_invalid,
        pages,
        to_note,
    ));
    let write = tickets::Load {
        batch,
        max_attempts: load.max_attempts,
        source: &load.source,
        receipts: load.receipts.as_ref(),
        loaded_at: OffsetDateTime::now_utc(),
    };
    let mut added = match load_pages(&mut conn, &write, to_load, changed).await {
        Ok(added) => added,
        Err(e) => {
            reader.abort(); // its staging goes with its connection
            return Err(e);
        }
    };
    let (mut staging, staged, mut counts) = reader
        .await
        .map_err(|e| IngestError::Reader(e.to_string()))??;
    let mut reader = staging.conn();

    seal(&mut reader, &mut counts).await?;
    each_problem(&mut reader, &staged, |p| out.problem(p)).await?;
    let refused = !counts.is_clean() && !load.skip_invalid;
    if counts.skipped > 0 && !refused {
        let mut refs = Vec::new();
        each_skipped(&mut reader, &staged, |r| {
            refs.push(r);
            refs.len() < SKIPPED_SHOWN
        })
        .await?;
        out.skipped(counts.skipped, refs);
    }
    let keep = receipts.is_ok() && !refused;
    if keep {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    let loaded = match receipts {
        _ if refused => Loaded::Refused { counts },
        Err(batch_has) => Loaded::ReceiptsDiffer { batch_has },
        Ok(()) => {
            // What it changed is said once it is kept.
            let mut after = (i64::MIN, String::new());
            loop {
                let page =
                    staging::changed(&mut reader, (after.0, &after.1), staged.chunk as i64).await?;
                let Some(last) = page.last() else { break };
                after = (last.0, last.1.clone());
                for (line, reference, project_id, fields) in page {
                    added.changed += 1;
                    out.changed(Changed {
                        project_id,
                        reference,
                        line: line as u64,
                        fields: fields.split(", ").map(str::to_owned).collect(),
                    });
                }
            }
            Loaded::Done {
                batch,
                added,
                counts,
            }
        }
    };
    staging.close().await;
    loader.close().await;
    Ok(loaded)
}

/// The reader's side of a load, a task of its own: every page of tickets read, merged and
/// sorted against the store, then sent to the loader while `loading` and no problem is known
/// (unless `skip_invalid`); the loader's changed refs noted in staging. Gives the staging
/// back when done.
async fn read_pages(
    mut session: Session,
    mut staged: Staged,
    loading: bool,
    skip_invalid: bool,
    pages: mpsc::Sender<SortedPage>,
    mut noted: mpsc::UnboundedReceiver<Vec<ChangedRef>>,
) -> Result<(Session, Staged, Counts), IngestError> {
    let mut conn = session.conn();
    let mut counts = Counts::default();
    while let Some(page) = next_page(&mut conn, &mut staged).await? {
        counts.add(&page);
        while let Ok(changed) = noted.try_recv() {
            staging::add_changed(&mut conn, &changed).await?;
        }
        // A problem found late (rows that disagree) stops the load, unless invalid tickets
        // are skipped; the pages are still read, to report every problem.
        if !loading || page.is_empty() || (staged.problems_found() && !skip_invalid) {
            continue;
        }
        let sorted = tickets::sort_page(&mut conn, page).await?;
        if pages.send(sorted).await.is_err() {
            break; // the loader failed: its error is the one to report
        }
    }
    drop(pages);
    while let Some(changed) = noted.recv().await {
        staging::add_changed(&mut conn, &changed).await?;
    }
    Ok((session, staged, counts))
}

/// The loader's side: each sorted page loaded in the caller's transaction. The changed refs
/// go back to the reader, to be noted in staging.
async fn load_pages(
    conn: &mut Conn<'_>,
    load: &tickets::Load<'_>,
    mut pages: mpsc::Receiver<SortedPage>,
    noted: mpsc::UnboundedSender<Vec<ChangedRef>>,
) -> Result<Added, IngestError> {
    let mut added = Added::default();
    while let Some(page) = pages.recv().await {
        let mut report = tickets::LoadReport::default();
        tickets::load_sorted(conn, load, &page, &mut report).await?;
        added.tickets += report.tickets_added;
        added.files += report.attachments_added;
        added.unchanged += report.unchanged;
        if !report.changed.is_empty() {
            let _ = noted.send(report.changed);
        }
    }
    Ok(added)
}
