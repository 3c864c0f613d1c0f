//! The manifest: a CSV of defect tickets and their files, read in one streaming pass into
//! typed rows, merged into `TicketSpec`s, with every problem reported by file, line and column.

mod files;
pub(crate) mod merge;
pub(crate) mod parse;
pub(crate) mod reader;
pub(crate) mod register;

pub use register::{MapError, SheetError};

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
    /// `--map FILE`: how a register's own columns and words become the manifest's.
    pub map: Option<PathBuf>,
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
    /// A manifest from stdin, a pipe or a device has no folder of its own to resolve its
    /// attachment paths against (`/dev` would be taken for it).
    #[error(
        "manifest {path} is read from a stream, not a file in a folder: give --files-root \
         (the folder its attachment paths are relative to)"
    )]
    StreamNeedsFilesRoot { path: PathBuf },
    #[error("files root {path} is not a readable directory")]
    FilesRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(transparent)]
    Sheet(#[from] SheetError),
    /// The private staging file of [`check`] could not be written (a full or read-only
    /// temporary folder: `TMPDIR`).
    #[error("cannot stage manifest {path} in a temporary file (TMPDIR)")]
    Staging {
        path: PathBuf,
        #[source]
        source: anyhow::Error,
    },
}

/// A manifest opened for one pass over its rows: found, a file or a pipe, its files root
/// resolved, its first bytes read.
#[derive(Debug)]
pub struct Opened {
    /// Where its problems are: the file as given, and a spreadsheet's sheet
    /// (`register.xlsx:Defects`).
    path: PathBuf,
    input: Input,
    root: PathBuf,
    allow_outside_root: bool,
    map: Option<register::Map>,
}

/// What the rows are read from.
enum Input {
    Csv {
        file: File,
        /// The first bytes, already read from `file`.
        head: Vec<u8>,
        /// A second handle on a regular file and its length (to rescan its last record).
        tail: Option<(File, u64)>,
        /// Why the start of the file says it is no CSV at all.
        not_csv: Option<String>,
    },
    Sheet(register::Sheet),
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Csv { .. } => f.write_str("Csv"),
            Input::Sheet(sheet) => write!(f, "Sheet({:?})", sheet.name),
        }
    }
}

/// Opens a manifest: what makes it unreadable as a whole is an error here, before anything
/// else is done; anything wrong inside it is a problem of the pass.
pub fn open(manifest: &Path, opts: &ManifestOptions) -> Result<Opened, ManifestError> {
    let given = manifest;
    // `-` is standard input.
    let manifest = if given == Path::new(STDIN) {
        Path::new("/dev/stdin")
    } else {
        given
    };
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
    let map = match &opts.map {
        Some(map) => Some(register::Map::load(map)?),
        None => None,
    };
    if register::is_spreadsheet(manifest) {
        let root = files_root(manifest, opts)?;
        let sheet_name = map.as_ref().and_then(|m| m.sheet.as_deref());
        let sheet = register::Sheet::open(manifest, sheet_name)?;
        return Ok(Opened {
            path: PathBuf::from(format!("{}:{}", manifest.display(), sheet.name)),
            input: Input::Sheet(sheet),
            root,
            allow_outside_root: opts.allow_outside_root,
            map,
        });
    }
    let mut file = File::open(manifest).map_err(unreadable)?;
    // A pipe (`<(...)`, /dev/stdin) is read once; only a regular file is rescanned.
    let tail = match meta.is_file() {
        true => Some((File::open(manifest).map_err(unreadable)?, meta.len())),
        false => None,
    };
    let root = files_root(given, opts)?;
    let mut head = vec![0u8; 8192];
    let n = files::read_head(&mut file, &mut head).map_err(unreadable)?;
    head.truncate(n);
    let not_csv = not_csv(&head);
    Ok(Opened {
        path: given.to_owned(),
        input: Input::Csv {
            file,
            head,
            tail,
            not_csv,
        },
        root,
        allow_outside_root: opts.allow_outside_root,
        map,
    })
}

impl Opened {
    /// Where the manifest's problems are: its path as given, with a spreadsheet's sheet
    /// (`register.xlsx:Defects`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files root the paths are resolved against (canonical).
    pub fn files_root(&self) -> &Path {
        &self.root
    }

    /// Reads every row into `sink`, one at a time (blocking reads: call it off the runtime).
    pub(crate) fn parse(self, sink: &mut impl parse::RowSink) -> parse::Parsed {
        let header_row = self.map.as_ref().map_or(1, |m| m.header_row);
        let records: Box<dyn reader::RecordSource> = match self.input {
            Input::Csv {
                not_csv: Some(message),
                ..
            } => {
                sink.problem(Problem {
                    file: self.path,
                    line: 1,
                    field: None,
                    message,
                    reference: None,
                });
                return parse::Parsed::default();
            }
            Input::Csv {
                file, head, tail, ..
            } => {
                let delimiter = self
                    .map
                    .as_ref()
                    .and_then(|m| m.delimiter)
                    .unwrap_or_else(|| reader::detect_delimiter(&head, header_row - 1));
                let source = io::Cursor::new(head).chain(file);
                let skip = header_row - 1;
                Box::new(reader::Records::new(
                    Box::new(source),
                    tail,
                    delimiter,
                    skip,
                ))
            }
            Input::Sheet(mut sheet) => {
                sheet.start_at(header_row);
                Box::new(sheet)
            }
        };
        let files = files::Files::new(self.root, self.allow_outside_root);
        match &self.map {
            None => parse::Parser::new(&self.path, files, sink).run(records),
            Some(map) => match register::Mapped::start(records, map) {
                Ok(mapped) => parse::Parser::new(&self.path, files, sink).run(mapped),
                Err((line, problems)) => {
                    for problem in problems {
                        sink.problem(Problem {
                            file: self.path.clone(),
                            line,
                            field: problem.field.map(|c| c.name().to_owned()),
                            message: problem.message,
                            reference: None,
                        });
                    }
                    parse::Parsed {
                        header_broken: true,
                        last_line: line,
                    }
                }
            },
        }
    }
}

/// The manifest path that means standard input.
pub const STDIN: &str = "-";

/// A manifest read from standard input, or from anywhere under `/dev` or `/proc` (a pipe,
/// `/dev/stdin`, `<(…)`'s `/dev/fd/N`): it has no folder of its own.
pub fn is_stream(manifest: &Path) -> bool {
    let special = |p: &Path| p.starts_with("/dev") || p.starts_with("/proc");
    manifest == Path::new(STDIN)
        || special(manifest)
        || manifest
            .parent()
            .map(|parent| match parent.as_os_str().is_empty() {
                true => Path::new("."),
                false => parent,
            })
            .and_then(|parent| parent.canonicalize().ok())
            .is_some_and(|parent| special(&parent))
}

fn files_root(manifest: &Path, opts: &ManifestOptions) -> Result<PathBuf, ManifestError> {
    let root = match &opts.files_root {
        Some(root) => root.clone(),
        None if is_stream(manifest) => {
            return Err(ManifestError::StreamNeedsFilesRoot {
                path: manifest.to_owned(),
            });
        }
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

/// `visibuild-import map REGISTER`: a starting map for a register, as commented TOML.
pub fn starting_map(register: &Path) -> Result<String, ManifestError> {
    register::guess::starting_map(register)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_pipes_and_devices_are_streams_and_a_file_in_a_folder_is_not() {
        for stream in [
            "-",
            "/dev/stdin",
            "/dev/fd/63",
            "/proc/self/fd/0",
            "/dev/../dev/stdin",
        ] {
            assert!(is_stream(Path::new(stream)), "{stream}");
        }
        let dir = tempfile::tempdir().unwrap();
        for file in [
            dir.path().join("manifest.csv"),
            PathBuf::from("manifest.csv"),
        ] {
            assert!(!is_stream(&file), "{}", file.display());
        }
        let err = files_root(Path::new("/dev/stdin"), &ManifestOptions::default()).unwrap_err();
        assert!(matches!(err, ManifestError::StreamNeedsFilesRoot { .. }));
        let given = ManifestOptions {
            files_root: Some(dir.path().to_owned()),
            ..ManifestOptions::default()
        };
        assert!(files_root(Path::new("-"), &given).is_ok());
    }
}
