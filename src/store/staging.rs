//! Staging: a manifest's rows, files and problems in TEMP tables of one connection — the
//! store's for `enqueue`, a private SQLite file's for `check` — where the rules between rows
//! are answered with indexes instead of memory. TEMP tables are the connection's own: no
//! other connection (another `enqueue`, a worker) sees them, and they vanish with it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use serde::Deserialize;
use sqlx::{QueryBuilder, Sqlite};
use visibuild_queue::{on, sql};

use super::{Conn, StoreError};
use crate::domain::{Priority, ProjectId};
use crate::manifest::{AttachmentSpec, Row};

/// The staging tables, per store. Rows are appended in line order (so the index on the line
/// grows at its right edge); the other indexes the rules need are built once every row is
/// in ([`index`]).
const POSTGRES_TABLES: &str = "
    CREATE TEMP TABLE stage_rows (
        line bigint PRIMARY KEY, ref text NOT NULL, project_id uuid,
        title text, address text, priority text, contact_name text, contact_email text,
        bad boolean NOT NULL, title_unreadable boolean NOT NULL);
    CREATE TEMP TABLE stage_files (
        line bigint NOT NULL, position int NOT NULL, path text NOT NULL, resolved bytea NOT NULL,
        root bytea NOT NULL, filename text NOT NULL, content_type text NOT NULL,
        size bigint NOT NULL, mtime_ns bigint NOT NULL);
    CREATE TEMP TABLE stage_poisoned (ref text PRIMARY KEY, line bigint NOT NULL);
    CREATE TEMP TABLE stage_problems (
        line bigint NOT NULL, phase smallint NOT NULL, seq bigint NOT NULL, field text,
        message text NOT NULL, ref text);
    CREATE TEMP TABLE stage_skipped (ref text NOT NULL, line bigint NOT NULL);
    CREATE TEMP TABLE stage_changed (
        line bigint NOT NULL, ref text NOT NULL, project_id uuid NOT NULL, fields text NOT NULL);";

const SQLITE_TABLES: &str = "
    CREATE TEMP TABLE stage_rows (
        line INTEGER PRIMARY KEY, ref TEXT NOT NULL, project_id BLOB,
        title TEXT, address TEXT, priority TEXT, contact_name TEXT, contact_email TEXT,
        bad INTEGER NOT NULL, title_unreadable INTEGER NOT NULL);
    CREATE TEMP TABLE stage_files (
        line INTEGER NOT NULL, position INTEGER NOT NULL, path TEXT NOT NULL,
        resolved BLOB NOT NULL, root BLOB NOT NULL, filename TEXT NOT NULL,
        content_type TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL);
    CREATE TEMP TABLE stage_poisoned (ref TEXT PRIMARY KEY, line INTEGER NOT NULL);
    CREATE TEMP TABLE stage_problems (
        line INTEGER NOT NULL, phase INTEGER NOT NULL, seq INTEGER NOT NULL, field TEXT,
        message TEXT NOT NULL, ref TEXT);
    CREATE TEMP TABLE stage_skipped (ref TEXT NOT NULL, line INTEGER NOT NULL);
    CREATE TEMP TABLE stage_changed (
        line INTEGER NOT NULL, ref TEXT NOT NULL, project_id BLOB NOT NULL,
        fields TEXT NOT NULL);";

/// Every staging table, for [`clear`].
const TABLES: &[&str] = &[
    "stage_rows",
    "stage_files",
    "stage_poisoned",
    "stage_problems",
    "stage_skipped",
    "stage_changed",
    "stage_multi",
    "stage_projects",
    "stage_links",
    "stage_skipped_refs",
];

/// Creates the staging tables on this connection (dropping any a failed load left on it).
pub async fn create(conn: &mut Conn<'_>) -> Result<(), StoreError> {
    clear(conn).await?;
    match conn {
        Conn::Postgres(c) => {
            sqlx::raw_sql(POSTGRES_TABLES).execute(&mut **c).await?;
        }
        Conn::Sqlite(c) => {
            sqlx::raw_sql(SQLITE_TABLES).execute(&mut **c).await?;
        }
    }
    Ok(())
}

/// Drops the staging tables of this connection, if there are any.
pub async fn clear(conn: &mut Conn<'_>) -> Result<(), StoreError> {
    let statement = TABLES
        .iter()
        .map(|table| format!("DROP TABLE IF EXISTS temp.{table};"))
        .collect::<String>();
    let statement = match conn {
        // Postgres names the connection's own schema `pg_temp`.
        Conn::Postgres(_) => statement.replace("temp.", "pg_temp."),
        Conn::Sqlite(_) => statement,
    };
    match conn {
        Conn::Postgres(c) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut **c)
                .await?;
        }
        Conn::Sqlite(c) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut **c)
                .await?;
        }
    }
    Ok(())
}

/// A problem as staged: its place in the report is `(line, phase, seq)`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StagedProblem {
    pub line: i64,
    pub phase: i16,
    pub seq: i64,
    pub field: Option<String>,
    pub message: String,
    #[sqlx(rename = "ref")]
    pub reference: Option<String>,
}

/// What one chunk of the manifest adds to staging.
#[derive(Debug, Default)]
pub struct Chunk {
    pub rows: Vec<Row>,
    pub problems: Vec<StagedProblem>,
    /// `(line, ref)` of rows that cannot say which ticket they belong to.
    pub poisoned: Vec<(i64, String)>,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.rows.len() + self.problems.len() + self.poisoned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn bytes(path: &std::path::Path) -> &[u8] {
    OsStr::as_bytes(path.as_os_str())
}

/// Rows per multi-row `INSERT … VALUES` in SQLite: at ten columns, well under its limit of
/// 32,766 parameters a statement.
const SQLITE_ROWS_PER_INSERT: usize = 500;

/// Appends a chunk: its rows, their files, its problems and poisoned refs.
pub async fn append(conn: &mut Conn<'_>, chunk: &Chunk) -> Result<(), StoreError> {
    let files: Vec<(i64, i32, &AttachmentSpec)> = chunk
        .rows
        .iter()
        .flat_map(|row| {
            (0..)
                .zip(&row.attachments)
                .map(|(position, a)| (row.line as i64, position, a))
        })
        .collect();
    match conn {
        Conn::Postgres(c) => {
            if !chunk.rows.is_empty() {
                let rows = &chunk.rows;
                sqlx::query(
                    "INSERT INTO stage_rows (line, ref, project_id, title, address, priority,
                                             contact_name, contact_email, bad, title_unreadable)
                     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::uuid[], $4::text[],
                                          $5::text[], $6::text[], $7::text[], $8::text[],
                                          $9::boolean[], $10::boolean[])",
                )
                .bind(rows.iter().map(|r| r.line as i64).collect::<Vec<_>>())
                .bind(
                    rows.iter()
                        .map(|r| r.reference.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(rows.iter().map(|r| r.project_id).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.title.as_deref()).collect::<Vec<_>>())
                .bind(
                    rows.iter()
                        .map(|r| r.address.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|r| r.priority.map(Priority::as_str))
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|r| r.contact_name.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|r| r.contact_email.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(rows.iter().map(|r| r.bad).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.title_unreadable).collect::<Vec<_>>())
                .execute(&mut **c)
                .await?;
            }
            if !files.is_empty() {
                sqlx::query(
                    "INSERT INTO stage_files (line, position, path, resolved, root, filename,
                                              content_type, size, mtime_ns)
                     SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::text[], $4::bytea[],
                                          $5::bytea[], $6::text[], $7::text[], $8::bigint[],
                                          $9::bigint[])",
                )
                .bind(files.iter().map(|f| f.0).collect::<Vec<_>>())
                .bind(files.iter().map(|f| f.1).collect::<Vec<_>>())
                .bind(files.iter().map(|f| &*f.2.path).collect::<Vec<_>>())
                .bind(
                    files
                        .iter()
                        .map(|f| bytes(&f.2.resolved))
                        .collect::<Vec<_>>(),
                )
                .bind(
                    files
                        .iter()
                        .map(|f| bytes(&f.2.confine))
                        .collect::<Vec<_>>(),
                )
                .bind(files.iter().map(|f| &*f.2.filename).collect::<Vec<_>>())
                .bind(files.iter().map(|f| &*f.2.content_type).collect::<Vec<_>>())
                .bind(files.iter().map(|f| f.2.size as i64).collect::<Vec<_>>())
                .bind(files.iter().map(|f| f.2.mtime_ns).collect::<Vec<_>>())
                .execute(&mut **c)
                .await?;
            }
        }
        Conn::Sqlite(c) => {
            for part in chunk.rows.chunks(SQLITE_ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO stage_rows (line, ref, project_id, title, address, priority,
                                             contact_name, contact_email, bad, title_unreadable) ",
                );
                insert.push_values(part, |mut row, r| {
                    row.push_bind(r.line as i64)
                        .push_bind(r.reference.as_str())
                        .push_bind(r.project_id)
                        .push_bind(r.title.as_deref())
                        .push_bind(r.address.as_deref())
                        .push_bind(r.priority.map(Priority::as_str))
                        .push_bind(r.contact_name.as_deref())
                        .push_bind(r.contact_email.as_deref())
                        .push_bind(r.bad)
                        .push_bind(r.title_unreadable);
                });
                insert.build().execute(&mut **c).await?;
            }
            for part in files.chunks(SQLITE_ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO stage_files (line, position, path, resolved, root, filename,
                                              content_type, size, mtime_ns) ",
                );
                insert.push_values(part, |mut row, (line, position, a)| {
                    row.push_bind(*line)
                        .push_bind(*position)
                        .push_bind(&*a.path)
                        .push_bind(bytes(&a.resolved))
                        .push_bind(bytes(&a.confine))
                        .push_bind(&*a.filename)
                        .push_bind(&*a.content_type)
                        .push_bind(a.size as i64)
                        .push_bind(a.mtime_ns);
                });
                insert.build().execute(&mut **c).await?;
            }
        }
    }
    add_problems(conn, &chunk.problems).await?;
    poison(conn, &chunk.poisoned).await?;
    Ok(())
}

/// Adds problems to the report.
pub async fn add_problems(
    conn: &mut Conn<'_>,
    problems: &[StagedProblem],
) -> Result<(), StoreError> {
    if problems.is_empty() {
        return Ok(());
    }
    match conn {
        Conn::Postgres(c) => {
            sqlx::query(
                "INSERT INTO stage_problems (line, phase, seq, field, message, ref)
                 SELECT * FROM UNNEST($1::bigint[], $2::smallint[], $3::bigint[], $4::text[],
                                      $5::text[], $6::text[])",
            )
            .bind(problems.iter().map(|p| p.line).collect::<Vec<_>>())
            .bind(problems.iter().map(|p| p.phase).collect::<Vec<_>>())
            .bind(problems.iter().map(|p| p.seq).collect::<Vec<_>>())
            .bind(
                problems
                    .iter()
                    .map(|p| p.field.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                problems
                    .iter()
                    .map(|p| p.message.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                problems
                    .iter()
                    .map(|p| p.reference.as_deref())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **c)
            .await?;
        }
        Conn::Sqlite(c) => {
            let json = serde_json::to_string(
                &problems
                    .iter()
                    .map(|p| (p.line, p.phase, p.seq, &p.field, &p.message, &p.reference))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| StoreError::Batch(e.to_string()))?;
            sqlx::query(
                "INSERT INTO stage_problems (line, phase, seq, field, message, ref)
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                        value ->> 5
                   FROM json_each($1)",
            )
            .bind(json)
            .execute(&mut **c)
            .await?;
        }
    }
    Ok(())
}

/// Marks refs whose every ticket is left out (the first line that did it is kept).
pub async fn poison(conn: &mut Conn<'_>, refs: &[(i64, String)]) -> Result<(), StoreError> {
    if refs.is_empty() {
        return Ok(());
    }
    match conn {
        Conn::Postgres(c) => {
            sqlx::query(
                "INSERT INTO stage_poisoned (ref, line)
                 SELECT ref, min(line) FROM UNNEST($1::text[], $2::bigint[]) AS p (ref, line)
                  GROUP BY ref
                 ON CONFLICT (ref) DO NOTHING",
            )
            .bind(refs.iter().map(|p| p.1.as_str()).collect::<Vec<_>>())
            .bind(refs.iter().map(|p| p.0).collect::<Vec<_>>())
            .execute(&mut **c)
            .await?;
        }
        Conn::Sqlite(c) => {
            let json = serde_json::to_string(refs).map_err(|e| StoreError::Batch(e.to_string()))?;
            sqlx::query(
                "INSERT INTO stage_poisoned (ref, line)
                 SELECT value ->> 1, min(value ->> 0) FROM json_each($1) GROUP BY value ->> 1
                 ON CONFLICT (ref) DO NOTHING",
            )
            .bind(json)
            .execute(&mut **c)
            .await?;
        }
    }
    Ok(())
}

/// Every row is in: the indexes the rules read by, and the rows of refs met more than once
/// (or on a continuation row) tied to their ticket — `stage_links`, the ticket's first line
/// for each such row. A row without a link is a ticket of its own. Returns whether any row
/// is linked.
pub async fn index(conn: &mut Conn<'_>) -> Result<bool, StoreError> {
    let statements = match conn {
        Conn::Postgres(_) => POSTGRES_INDEX,
        Conn::Sqlite(_) => SQLITE_INDEX,
    };
    match conn {
        Conn::Postgres(c) => {
            sqlx::raw_sql(statements).execute(&mut **c).await?;
        }
        Conn::Sqlite(c) => {
            sqlx::raw_sql(statements).execute(&mut **c).await?;
        }
    }
    let linked: bool = on!(
        &mut *conn,
        sql!("SELECT EXISTS (SELECT 1 FROM stage_links)"),
        |c, q| sqlx::query_scalar(q).fetch_one(c).await
    )?;
    Ok(linked)
}

/// The rules between rows, in SQL that reads the same in both stores (but for index names,
/// which Postgres may leave out and SQLite may not, and `ANALYZE`, which Postgres needs for
/// TEMP tables: autovacuum never sees them).
///
/// - `stage_multi`: refs with more than one row, or with a continuation row.
/// - `stage_projects`: the projects of those refs, ranked by the first line that gives each:
///   a continuation row joins the first (`rank = 1`).
/// - `stage_links`: each row of those refs, with its ticket's project and first line.
macro_rules! index_statements {
    ($analyze:literal) => {
        concat!(
            "CREATE INDEX stage_files_line ON stage_files (line, position);
             CREATE TEMP TABLE stage_multi AS
                 SELECT ref FROM stage_rows
                  GROUP BY ref HAVING count(*) > 1 OR count(project_id) < count(*);
             CREATE UNIQUE INDEX stage_multi_ref ON stage_multi (ref);
             CREATE TEMP TABLE stage_projects AS
                 SELECT ref, project_id, first_line,
                        row_number() OVER (PARTITION BY ref ORDER BY first_line) AS rank,
                        count(*) OVER (PARTITION BY ref) AS projects
                   FROM (SELECT r.ref, r.project_id, min(r.line) AS first_line
                           FROM stage_rows r JOIN stage_multi m ON m.ref = r.ref
                          WHERE r.project_id IS NOT NULL
                          GROUP BY r.ref, r.project_id) AS given;
             CREATE INDEX stage_projects_ref ON stage_projects (ref, rank);
             CREATE TEMP TABLE stage_links AS
                 SELECT line, min(line) OVER (PARTITION BY ref, project_id) AS ticket_line,
                        project_id, continuation
                   FROM (SELECT r.line, r.ref, COALESCE(r.project_id, p.project_id) AS project_id,
                                r.project_id IS NULL AS continuation
                           FROM stage_rows r JOIN stage_multi m ON m.ref = r.ref
                           LEFT JOIN stage_projects p ON p.ref = r.ref AND p.rank = 1) AS linked;
             CREATE UNIQUE INDEX stage_links_line ON stage_links (line);
             CREATE INDEX stage_links_ticket ON stage_links (ticket_line, line);",
            $analyze
        )
    };
}

const POSTGRES_INDEX: &str = concat!(index_statements!(
    "ANALYZE stage_rows, stage_files, stage_poisoned, stage_multi, stage_projects,
                 stage_links;"
));
const SQLITE_INDEX: &str = index_statements!("");

/// A continuation row (blank `project_id`) whose ref has no project, or more than one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Continuation {
    pub line: i64,
    #[sqlx(rename = "ref")]
    pub reference: String,
    /// The ref's first project and the first line that gives it.
    pub first_project: Option<ProjectId>,
    pub first_line: Option<i64>,
    pub second_project: Option<ProjectId>,
    pub second_line: Option<i64>,
    /// How many projects the manifest gives the ref.
    pub projects: i64,
}

/// The continuation rows after `after_line` that cannot join one ticket, in line order.
pub async fn continuations(
    conn: &mut Conn<'_>,
    after_line: i64,
    limit: i64,
) -> Result<Vec<Continuation>, StoreError> {
    Ok(on!(
        &mut *conn,
        sql!(
            "SELECT l.line, r.ref, p1.project_id AS first_project, p1.first_line,
                    p2.project_id AS second_project, p2.first_line AS second_line,
                    COALESCE(p1.projects, 0) AS projects
               FROM stage_links l
               JOIN stage_rows r ON r.line = l.line
               LEFT JOIN stage_projects p1 ON p1.ref = r.ref AND p1.rank = 1
               LEFT JOIN stage_projects p2 ON p2.ref = r.ref AND p2.rank = 2
              WHERE l.continuation AND (p1.ref IS NULL OR p1.projects > 1) AND l.line > $1
              ORDER BY l.line
              LIMIT $2"
        ),
        |c, q| sqlx::query_as(q)
            .bind(after_line)
            .bind(limit)
            .fetch_all(c)
            .await
    )?)
}

/// The rows of a page: those in `[$1, $2)` that are tickets of their own, and the rows of
/// every ticket whose first line is there.
macro_rules! page_rows {
    () => {
        "
          FROM (SELECT s.line AS ticket_line, s.line, s.project_id
                  FROM stage_rows s
                  LEFT JOIN stage_links l ON l.line = s.line
                 WHERE s.line >= $1 AND s.line < $2 AND l.line IS NULL
                UNION ALL
                SELECT l.ticket_line, l.line, l.project_id
                  FROM stage_links l
                 WHERE l.ticket_line >= $1 AND l.ticket_line < $2) AS p
          JOIN stage_rows r ON r.line = p.line
          LEFT JOIN stage_files f ON f.line = r.line
          LEFT JOIN stage_poisoned x ON x.ref = r.ref"
    };
}

/// One row of a page, with one of its files (or none).
#[derive(Debug)]
pub struct PageRow {
    /// The ticket's first line.
    pub ticket_line: i64,
    pub line: i64,
    pub reference: String,
    /// The ticket's project (a continuation row's is its ref's first); `None` when no row
    /// gives the ref one.
    pub project_id: Option<ProjectId>,
    pub title: Option<String>,
    pub address: Option<String>,
    pub priority: Option<String>,
    pub contact_name: Option<String>,
    pub contact_email: Option<String>,
    pub bad: bool,
    pub title_unreadable: bool,
    pub poisoned: bool,
    pub file: Option<PageFile>,
}

/// A file of a page row.
#[derive(Debug)]
pub struct PageFile {
    pub path: String,
    /// The resolved path's bytes.
    pub resolved: Vec<u8>,
    /// The confining folder's bytes.
    pub root: Vec<u8>,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    pub mtime_ns: i64,
}

/// A page row as Postgres returns it.
#[derive(sqlx::FromRow)]
struct PgPageRow {
    ticket_line: i64,
    line: i64,
    #[sqlx(rename = "ref")]
    reference: String,
    project_id: Option<ProjectId>,
    title: Option<String>,
    address: Option<String>,
    priority: Option<String>,
    contact_name: Option<String>,
    contact_email: Option<String>,
    bad: bool,
    title_unreadable: bool,
    poisoned: bool,
    path: Option<String>,
    resolved: Option<Vec<u8>>,
    root: Option<Vec<u8>>,
    filename: Option<String>,
    content_type: Option<String>,
    size: Option<i64>,
    mtime_ns: Option<i64>,
}

impl From<PgPageRow> for PageRow {
    fn from(r: PgPageRow) -> Self {
        let file = r.path.map(|path| PageFile {
            path,
            resolved: r.resolved.unwrap_or_default(),
            root: r.root.unwrap_or_default(),
            filename: r.filename.unwrap_or_default(),
            content_type: r.content_type.unwrap_or_default(),
            size: r.size.unwrap_or_default(),
            mtime_ns: r.mtime_ns.unwrap_or_default(),
        });
        PageRow {
            ticket_line: r.ticket_line,
            line: r.line,
            reference: r.reference,
            project_id: r.project_id,
            title: r.title,
            address: r.address,
            priority: r.priority,
            contact_name: r.contact_name,
            contact_email: r.contact_email,
            bad: r.bad,
            title_unreadable: r.title_unreadable,
            poisoned: r.poisoned,
            file,
        }
    }
}

/// A page row as SQLite returns it: an element of one JSON array for the whole page (a page
/// crosses from SQLite's thread in one piece, not as thousands of rows of twenty values).
/// Blobs are hex; a missing project or file is null.
#[derive(Deserialize)]
struct SqlitePageRow(
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

impl TryFrom<SqlitePageRow> for PageRow {
    type Error = StoreError;

    fn try_from(r: SqlitePageRow) -> Result<Self, StoreError> {
        let unhex = |hex: Option<String>| {
            hex::decode(hex.unwrap_or_default())
                .map_err(|e| StoreError::Batch(format!("a staged blob: {e}")))
        };
        let project_id = match r.3 {
            Some(hex) => Some(ProjectId(uuid::Uuid::try_parse(&hex).map_err(|e| {
                StoreError::Batch(format!("a staged project id {hex:?}: {e}"))
            })?)),
            None => None,
        };
        let file = match r.12 {
            Some(path) => Some(PageFile {
                path,
                resolved: unhex(r.13)?,
                root: unhex(r.14)?,
                filename: r.15.unwrap_or_default(),
                content_type: r.16.unwrap_or_default(),
                size: r.17.unwrap_or_default(),
                mtime_ns: r.18.unwrap_or_default(),
            }),
            None => None,
        };
        Ok(PageRow {
            ticket_line: r.0,
            line: r.1,
            reference: r.2,
            project_id,
            title: r.4,
            address: r.5,
            priority: r.6,
            contact_name: r.7,
            contact_email: r.8,
            bad: r.9 != 0,
            title_unreadable: r.10 != 0,
            poisoned: r.11 != 0,
            file,
        })
    }
}

/// The rows of every ticket whose first line is in `[from, to)`, grouped by ticket (by first
/// line, then line), each row once per file (in order), or once without a file.
pub async fn page(conn: &mut Conn<'_>, from: i64, to: i64) -> Result<Vec<PageRow>, StoreError> {
    match conn {
        Conn::Postgres(c) => {
            let rows: Vec<PgPageRow> = sqlx::query_as(concat!(
                "SELECT p.ticket_line, r.line, r.ref, p.project_id, r.title, r.address,
                        r.priority, r.contact_name, r.contact_email, r.bad, r.title_unreadable,
                        x.ref IS NOT NULL AS poisoned, f.path, f.resolved, f.root, f.filename,
                        f.content_type, f.size, f.mtime_ns",
                page_rows!(),
                " ORDER BY p.ticket_line, r.line, f.position"
            ))
            .bind(from)
            .bind(to)
            .fetch_all(&mut **c)
            .await?;
            Ok(rows.into_iter().map(PageRow::from).collect())
        }
        Conn::Sqlite(c) => {
            let json: String = sqlx::query_scalar(concat!(
                "SELECT json_group_array(json_array(
                            p.ticket_line, r.line, r.ref,
                            CASE WHEN p.project_id IS NOT NULL THEN hex(p.project_id) END,
                            r.title, r.address, r.priority, r.contact_name, r.contact_email,
                            r.bad, r.title_unreadable, x.ref IS NOT NULL, f.path,
                            hex(f.resolved), hex(f.root), f.filename, f.content_type, f.size,
                            f.mtime_ns)
                        ORDER BY p.ticket_line, r.line, f.position)",
                page_rows!()
            ))
            .bind(from)
            .bind(to)
            .fetch_one(&mut **c)
            .await?;
            let rows: Vec<SqlitePageRow> = serde_json::from_str(&json)
                .map_err(|e| StoreError::Batch(format!("a staged page: {e}")))?;
            rows.into_iter().map(PageRow::try_from).collect()
        }
    }
}

/// `(first line, ref)` of tickets left out.
pub async fn add_skipped(conn: &mut Conn<'_>, skipped: &[(i64, String)]) -> Result<(), StoreError> {
    if skipped.is_empty() {
        return Ok(());
    }
    match conn {
        Conn::Postgres(c) => {
            sqlx::query(
                "INSERT INTO stage_skipped (ref, line)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[])",
            )
            .bind(skipped.iter().map(|s| s.1.as_str()).collect::<Vec<_>>())
            .bind(skipped.iter().map(|s| s.0).collect::<Vec<_>>())
            .execute(&mut **c)
            .await?;
        }
        Conn::Sqlite(c) => {
            let json =
                serde_json::to_string(skipped).map_err(|e| StoreError::Batch(e.to_string()))?;
            sqlx::query(
                "INSERT INTO stage_skipped (ref, line)
                 SELECT value ->> 1, value ->> 0 FROM json_each($1)",
            )
            .bind(json)
            .execute(&mut **c)
            .await?;
        }
    }
    Ok(())
}

/// Refs whose fields changed since they were loaded, for the load's report.
pub async fn add_changed(
    conn: &mut Conn<'_>,
    changed: &[super::tickets::ChangedRef],
) -> Result<(), StoreError> {
    for c in changed {
        on!(
            &mut *conn,
            sql!(
                "INSERT INTO stage_changed (line, ref, project_id, fields) VALUES ($1, $2, $3, $4)"
            ),
            |x, q| sqlx::query(q)
                .bind(c.line as i64)
                .bind(&c.reference)
                .bind(c.project_id)
                .bind(c.fields.join(", "))
                .execute(x)
                .await
                .map(drop)
        )?;
    }
    Ok(())
}

/// Every problem is in: sorts them for [`problems`], and the skipped refs for [`skipped`].
/// Returns `(problems, skipped refs)`.
pub async fn seal(conn: &mut Conn<'_>) -> Result<(i64, i64), StoreError> {
    let statements = "CREATE INDEX stage_problems_order ON stage_problems (line, phase, seq);
         CREATE TEMP TABLE stage_skipped_refs AS
             SELECT ref, min(line) AS line
               FROM (SELECT ref, line FROM stage_skipped
                     UNION ALL SELECT ref, line FROM stage_poisoned) AS s
              GROUP BY ref;
         CREATE INDEX stage_skipped_refs_line ON stage_skipped_refs (line, ref);";
    match conn {
        Conn::Postgres(c) => {
            sqlx::raw_sql(statements).execute(&mut **c).await?;
        }
        Conn::Sqlite(c) => {
            sqlx::raw_sql(statements).execute(&mut **c).await?;
        }
    }
    Ok(on!(
        &mut *conn,
        sql!(
            "SELECT (SELECT count(*) FROM stage_problems), (SELECT count(*) FROM stage_skipped_refs)"
        ),
        |c, q| sqlx::query_as(q).fetch_one(c).await
    )?)
}

/// A page of problems after `after` (`(line, phase, seq)`), in report order.
pub async fn problems(
    conn: &mut Conn<'_>,
    after: (i64, i16, i64),
    limit: i64,
) -> Result<Vec<StagedProblem>, StoreError> {
    Ok(on!(
        &mut *conn,
        sql!(
            "SELECT line, phase, seq, field, message, ref FROM stage_problems
              WHERE (line, phase, seq) > ($1, $2, $3)
              ORDER BY line, phase, seq
              LIMIT $4"
        ),
        |c, q| sqlx::query_as(q)
            .bind(after.0)
            .bind(after.1)
            .bind(after.2)
            .bind(limit)
            .fetch_all(c)
            .await
    )?)
}

/// A page of skipped refs after `after` (`(line, ref)`), in line order.
pub async fn skipped(
    conn: &mut Conn<'_>,
    after: (i64, &str),
    limit: i64,
) -> Result<Vec<(i64, String)>, StoreError> {
    Ok(on!(
        &mut *conn,
        sql!(
            "SELECT line, ref FROM stage_skipped_refs WHERE (line, ref) > ($1, $2)
              ORDER BY line, ref LIMIT $3"
        ),
        |c, q| sqlx::query_as(q)
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(c)
            .await
    )?)
}

/// A page of changed refs after `after` (`(line, ref)`), in line order:
/// `(line, ref, project, fields)`.
pub async fn changed(
    conn: &mut Conn<'_>,
    after: (i64, &str),
    limit: i64,
) -> Result<Vec<(i64, String, ProjectId, String)>, StoreError> {
    Ok(on!(
        &mut *conn,
        sql!(
            "SELECT line, ref, project_id, fields FROM stage_changed
              WHERE (line, ref) > ($1, $2) ORDER BY line, ref LIMIT $3"
        ),
        |c, q| sqlx::query_as(q)
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(c)
            .await
    )?)
}
