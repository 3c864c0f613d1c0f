//! The manifest: a CSV of defect tickets and their files, read in one streaming pass into
//! typed rows, merged into `TicketSpec`s, with every problem reported by file, line and column.

mod files;
pub(crate) mod merge;
pub(crate) mod parse;
mod reader;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::{Digest, Md5};

use crate::domain::{Priority, ProjectId};

/// S3's limit for a single PUT: a larger file is refused when the manifest is checked.
pub const MAX_FILE_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// The longest ref, in bytes, a manifest may give: Postgres refuses an index row over 2704
/// bytes, and `(project_id, ref)` is indexed (an incompressible ref fails from 2673 bytes).
pub const MAX_REF_LEN: usize = 1000;

/// How a manifest's attachment paths are resolved.
#[derive(Debug, Clone, Default)]
pub struct ManifestOptions {
    /// Where attachment paths start; `None` means the manifest's own folder.
    pub files_root: Option<PathBuf>,
    /// Accept absolute paths, `..` and symlinks that leave the files root.
    pub allow_outside_root: bool,
}

/// One ticket of the manifest, from one or several rows sharing `(project_id, ref)` (or
/// only `ref`, on continuation rows that leave `project_id` blank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketSpec {
    /// The first line of the ticket in the manifest.
    pub line: u64,
    pub reference: String,
    pub project_id: ProjectId,
    pub title: String,
    pub address: Option<String>,
    pub priority: Option<Priority>,
    pub contact_name: Option<String>,
    pub contact_email: Option<String>,
    pub attachments: Vec<AttachmentSpec>,
}

impl TicketSpec {
    /// A stable hex digest of the ticket's fields and attachment paths (as written): the
    /// same ref loaded again with different content gets a different digest.
    pub fn fields_digest(&self) -> String {
        let mut hasher = Md5::new();
        let mut put = |value: Option<&str>| match value {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            Some(text) => {
                hasher.update((text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
            None => hasher.update(u64::MAX.to_le_bytes()),
        };
        let project = self.project_id.to_string();
        put(Some("ticket/v1"));
        put(Some(&project));
        put(Some(&self.reference));
        put(Some(&self.title));
        put(self.address.as_deref());
        put(self.priority.map(Priority::as_str));
        put(self.contact_name.as_deref());
        put(self.contact_email.as_deref());
        for attachment in &self.attachments {
            put(Some(&attachment.path));
        }
        hex::encode(hasher.finalize())
    }
}

/// One file of a ticket, checked on disk. Every row naming the same path shares its
/// strings (a manifest may name one file from thousands of rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentSpec {
    /// The line of the row that names the file.
    pub line: u64,
    /// The path as written in the manifest.
    pub path: Arc<str>,
    /// Absolute, symlinks resolved: what is read for hashing and upload.
    pub resolved: Arc<Path>,
    /// The folder the file is opened inside at upload (the files root, or the file's own
    /// folder for a file outside it loaded with `--allow-outside-root`).
    pub confine: Arc<Path>,
    pub filename: Arc<str>,
    pub content_type: Arc<str>,
    pub size: u64,
    /// Modification time (ns since the epoch) when checked.
    pub mtime_ns: i64,
}

/// One row of a ticket, parsed and checked on its own (its problems are reported as it is
/// read); several rows of one ticket are merged by [`merge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: u64,
    pub reference: String,
    /// `None` on a continuation row (blank `project_id`): it joins its ref's ticket.
    pub project_id: Option<ProjectId>,
    pub title: Option<String>,
    pub address: Option<String>,
    pub priority: Option<Priority>,
    pub contact_name: Option<String>,
    pub contact_email: Option<String>,
    pub attachments: Vec<AttachmentSpec>,
    /// The row has a problem of its own: its ticket is left out.
    pub bad: bool,
    /// The title could not be read (bad UTF-8, a NUL), already reported.
    pub title_unreadable: bool,
}

/// Something wrong with a manifest, at a line (1 for the header) and maybe a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: u64,
    pub field: Option<String>,
    pub message: String,
    /// The ref of the row, when it could be read.
    pub reference: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// One problem per line, ready to print.
pub fn render_problems(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("{p}\n")).collect()
}

/// The outcome of checking a manifest, every ticket in memory ([`check`]). The commands
/// stream instead (`crate::ingest`): only counts are kept.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// The valid tickets, in manifest order.
    pub tickets: Vec<TicketSpec>,
    /// Every problem found, in line order.
    pub problems: Vec<Problem>,
    /// Refs of the tickets left out of `tickets` because of problems.
    pub skipped_refs: Vec<String>,
    /// The files root the paths were resolved against (canonical).
    pub files_root: PathBuf,
}

impl Checked {
    /// Attachments of the valid tickets.
    pub fn files(&self) -> usize {
        self.tickets.iter().map(|t| t.attachments.len()).sum()
    }

    /// Bytes to upload for the valid tickets.
    pub fn bytes(&self) -> u64 {
        self.tickets
            .iter()
            .flat_map(|t| &t.attachments)
            .map(|a| a.size)
            .sum()
    }

    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// See [`summary`].
    pub fn summary(&self) -> String {
        summary(
            self.tickets.len() as u64,
            self.skipped_refs.len() as u64,
            self.files() as u64,
            self.bytes(),
            self.problems.len() as u64,
        )
    }
}

/// `3 tickets, 5 files, 78 B; 0 problems`; with tickets left out for problems,
/// `2 tickets (1 valid, 1 with problems), 1 file, 4.0 KiB; 1 problem` (files and bytes are
/// the valid tickets').
pub fn summary(valid: u64, skipped: u64, files: u64, bytes: u64, problems: u64) -> String {
    use crate::human::count;
    let tickets = if skipped == 0 {
        count(valid, "ticket")
    } else {
        format!(
            "{} ({valid} valid, {skipped} with problems)",
            count(valid + skipped, "ticket")
        )
    };
    format!(
        "{tickets}, {}, {}; {}",
        count(files, "file"),
        crate::human::bytes(bytes),
        count(problems, "problem")
    )
}

/// A manifest that cannot be read at all. Anything wrong inside it is a [`Problem`].
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("manifest {path} is a directory, not a file")]
    IsDirectory { path: PathBuf },
    #[error("cannot read manifest {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("files root {path} is not a readable directory")]
    FilesRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The private staging file of [`check`] could not be written (a full or read-only
    /// temporary folder: `TMPDIR`).
    #[error("cannot stage manifest {path} in a temporary file (TMPDIR)")]
    Staging {
        path: PathBuf,
        #[source]
        source: anyhow::Error,
    },
}

/// Reads and checks a manifest and every file it names, in one pass: the valid tickets
/// and every problem, all in memory (for tests and tools; the commands stream through
/// `crate::ingest` instead). The rules between rows are answered in a private staging file,
/// as `check` answers them. Touches nothing but reads.
pub fn check(manifest: &Path, opts: &ManifestOptions) -> Result<Checked, ManifestError> {
    let opened = open(manifest, opts)?;
    // Its own thread and runtime: callers may be sync, or inside a runtime of their own.
    let staged = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(crate::ingest::check_collected(
                    opened,
                    crate::ingest::DEFAULT_CHUNK,
                ))
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

/// A manifest opened for one pass over its rows: found, a file or a pipe, its files root
/// resolved, its first bytes read.
#[derive(Debug)]
pub struct Opened {
    path: PathBuf,
    file: File,
    /// The first bytes, already read from `file`.
    head: Vec<u8>,
    /// A second handle on a regular file and its length (to rescan its last record).
    tail: Option<(File, u64)>,
    root: PathBuf,
    allow_outside_root: bool,
    /// Why the start of the file says it is no CSV at all.
    not_csv: Option<String>,
}

/// Opens a manifest: what makes it unreadable as a whole is an error here, before anything
/// else is done; anything wrong inside it is a problem of the pass.
pub fn open(manifest: &Path, opts: &ManifestOptions) -> Result<Opened, ManifestError> {
    let unreadable = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => ManifestError::NotFound {
            path: manifest.to_owned(),
        },
        _ => ManifestError::Unreadable {
            path: manifest.to_owned(),
            source,
        },
    };
    let meta = manifest.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(ManifestError::IsDirectory {
            path: manifest.to_owned(),
        });
    }
    let mut file = File::open(manifest).map_err(unreadable)?;
    // A pipe (`<(...)`, /dev/stdin) is read once; only a regular file is rescanned.
    let tail = match meta.is_file() {
        true => Some((File::open(manifest).map_err(unreadable)?, meta.len())),
        false => None,
    };
    let root = files_root(manifest, opts)?;
    let mut head = vec![0u8; 8192];
    let n = files::read_head(&mut file, &mut head).map_err(unreadable)?;
    head.truncate(n);
    let not_csv = not_csv(&head);
    Ok(Opened {
        path: manifest.to_owned(),
        file,
        head,
        tail,
        root,
        allow_outside_root: opts.allow_outside_root,
        not_csv,
    })
}

impl Opened {
    /// The manifest's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files root the paths are resolved against (canonical).
    pub fn files_root(&self) -> &Path {
        &self.root
    }

    /// Reads every row into `sink`, one at a time (blocking reads: call it off the runtime).
    pub(crate) fn parse(self, sink: &mut impl parse::RowSink) -> parse::Parsed {
        if let Some(message) = self.not_csv {
            sink.problem(Problem {
                file: self.path,
                line: 1,
                field: None,
                message,
                reference: None,
            });
            return parse::Parsed::default();
        }
        let source = io::Cursor::new(self.head).chain(self.file);
        let records = reader::Records::new(Box::new(source), self.tail);
        let files = files::Files::new(self.root, self.allow_outside_root);
        parse::Parser::new(&self.path, files, sink).run(records)
    }
}

fn files_root(manifest: &Path, opts: &ManifestOptions) -> Result<PathBuf, ManifestError> {
    let root = match &opts.files_root {
        Some(root) => root.clone(),
        None => match manifest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        },
    };
    let canonical = root
        .canonicalize()
        .map_err(|source| ManifestError::FilesRoot {
            path: root.clone(),
            source,
        })?;
    if !canonical.is_dir() {
        return Err(ManifestError::FilesRoot {
            path: root,
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    Ok(canonical)
}

/// Why the start of a file says it is no manifest at all: empty, or binary.
fn not_csv(head: &[u8]) -> Option<String> {
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    if text.iter().all(|b| b.is_ascii_whitespace()) {
        return Some(format!(
            "the manifest is empty: expected a header row ({})",
            parse::column_list()
        ));
    }
    // Text in a legacy encoding is not binary: its bad lines are reported one by one; so
    // is a NUL below the header, on its own line. A NUL in the header line is binary, or
    // UTF-16 (a NUL beside every ASCII letter).
    let not_utf8 = std::str::from_utf8(text).is_err_and(|err| err.error_len().is_some());
    let header = text.trim_ascii_start().split(|&b| b == b'\n').next();
    let nul_in_header = header.is_some_and(|line| line.contains(&0));
    let binary = nul_in_header || (not_utf8 && files::sniff(text).is_some());
    if binary {
        let utf16 = text.starts_with(b"\xFF\xFE") || text.starts_with(b"\xFE\xFF");
        let content = match files::sniff(text) {
            Some(kind) => format!("its content is {kind}"),
            None if utf16 => "it is UTF-16 text".to_owned(),
            None => "it has binary content".to_owned(),
        };
        return Some(format!(
            "not a CSV file: {content}; expected a UTF-8 header row ({})",
            parse::column_list()
        ));
    }
    None
}
