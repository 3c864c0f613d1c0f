//! An attachment's bytes, opened for hashing and upload *inside* the folder the manifest was
//! checked against (`cap-std`), so a file swapped for a symlink out of it is refused.

use crate::domain::FileStamp;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// An attachment opened for reading: the handle hashing and upload both read, and what
/// it looked like when opened (`fstat` of the handle, not of the path).
#[derive(Debug)]
pub struct Source {
    pub file: File,
    pub stamp: FileStamp,
}

/// Why an attachment could not be opened. Every variant is permanent for this attempt: an
/// operator fixes the file and runs `retry`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "{path}: refused: it now leads outside the files root {root} (a symlink or a moved folder was put in its place)"
    )]
    Escapes { path: PathBuf, root: PathBuf },
    #[error("{path}: refused: it is now {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: no longer exists")]
    Missing { path: PathBuf },
    #[error("{path}: cannot be read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Open `resolved` (the absolute path the manifest check found) for reading, inside `root`:
/// the folder recorded for it at load (the files root, or the file's own folder for a file
/// loaded with `--allow-outside-root`). An empty `root` (a row loaded before roots were
/// recorded) confines to the file's own folder. Symlinks are followed only while they stay
/// inside. A FIFO or device is opened without blocking and refused by its true type.
pub fn open(root: &Path, resolved: &Path) -> Result<Source, SourceError> {
    let (folder, relative) = if root.as_os_str().is_empty() {
        match (resolved.parent(), resolved.file_name()) {
            (Some(parent), Some(name)) => (parent, Path::new(name)),
            _ => {
                return Err(SourceError::NotRegular {
                    path: resolved.to_owned(),
                    kind: "a directory",
                });
            }
        }
    } else {
        match resolved.strip_prefix(root) {
            Ok(relative) if !relative.as_os_str().is_empty() => (root, relative),
            // Never widen the confinement: a path not under its root is refused.
            _ => {
                return Err(SourceError::Escapes {
                    path: resolved.to_owned(),
                    root: root.to_owned(),
                });
            }
        }
    };
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => SourceError::Missing {
            path: resolved.to_owned(),
        },
        _ => SourceError::Io {
            path: resolved.to_owned(),
            source,
        },
    };
    let dir = Dir::open_ambient_dir(folder, ambient_authority()).map_err(io_error)?;
    let mut options = OpenOptions::new();
    options.read(true);
    // Non-blocking, so that opening a FIFO does not wait for a writer; no effect on files.
    options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = match dir.open_with(relative, &options) {
        Ok(file) => file.into_std(),
        Err(e) if is_escape(&e) => {
            return Err(SourceError::Escapes {
                path: resolved.to_owned(),
                root: folder.to_owned(),
            });
        }
        Err(e) => return Err(io_error(e)),
    };
    let meta = file.metadata().map_err(io_error)?;
    let kind = meta.file_type();
    let not_regular = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else {
        Some("not a regular file")
    };
    if let Some(kind) = not_regular {
        return Err(SourceError::NotRegular {
            path: resolved.to_owned(),
            kind,
        });
    }
    Ok(Source {
        stamp: FileStamp::of(&meta),
        file,
    })
}

/// cap-std's refusal of a path that would leave the directory.
fn is_escape(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        && e.to_string().contains("outside of the filesystem")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("files")).unwrap();
        (dir, root)
    }

    #[test]
    fn a_regular_file_inside_the_root_opens_with_its_stamp() {
        let (_d, root) = root();
        std::fs::write(root.join("files/a.jpg"), b"abc").unwrap();
        let source = open(&root, &root.join("files/a.jpg")).unwrap();
        assert_eq!(source.stamp.size, 3);
    }

    #[test]
    fn a_symlink_inside_the_root_is_followed() {
        let (_d, root) = root();
        std::fs::write(root.join("files/real.jpg"), b"abcd").unwrap();
        std::os::unix::fs::symlink("real.jpg", root.join("files/a.jpg")).unwrap();
        assert_eq!(
            open(&root, &root.join("files/a.jpg")).unwrap().stamp.size,
            4
        );
    }

    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let (_d, root) = root();
        std::os::unix::fs::symlink("/etc/passwd", root.join("files/a.jpg")).unwrap();
        let err = open(&root, &root.join("files/a.jpg")).unwrap_err();
        assert!(matches!(err, SourceError::Escapes { .. }), "{err}");
        assert!(err.to_string().contains("outside the files root"), "{err}");
        std::os::unix::fs::symlink("../../..", root.join("files/up")).unwrap();
        let err = open(&root, &root.join("files/up/etc/passwd")).unwrap_err();
        assert!(matches!(err, SourceError::Escapes { .. }), "{err}");
    }

    #[test]
    fn a_fifo_a_directory_and_a_device_are_refused_by_their_type() {
        let (_d, root) = root();
        let fifo = root.join("files/pipe.jpg");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = open(&root, &fifo).unwrap_err();
        assert!(err.to_string().contains("a FIFO (named pipe)"), "{err}");
        std::fs::create_dir(root.join("files/d.jpg")).unwrap();
        let err = open(&root, &root.join("files/d.jpg")).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        // Outside the root only when loaded with --allow-outside-root: confined to /dev.
        let err = open(Path::new("/dev"), Path::new("/dev/null")).unwrap_err();
        assert!(err.to_string().contains("a character device"), "{err}");
    }

    #[test]
    fn a_path_not_under_its_root_is_refused_never_opened_elsewhere() {
        let (_d, root) = root();
        let err = open(&root.join("files"), Path::new("/etc/passwd")).unwrap_err();
        assert!(matches!(err, SourceError::Escapes { .. }), "{err}");
        // A row loaded before roots were recorded: its own folder, the last name checked.
        std::fs::write(root.join("files/a.jpg"), b"abc").unwrap();
        assert!(open(Path::new(""), &root.join("files/a.jpg")).is_ok());
    }

    #[test]
    fn a_missing_file_says_so() {
        let (_d, root) = root();
        let err = open(&root, &root.join("files/gone.jpg")).unwrap_err();
        assert!(matches!(err, SourceError::Missing { .. }), "{err}");
    }
}
