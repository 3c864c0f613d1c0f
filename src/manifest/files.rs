//! Attachment paths: resolved against the files root, checked on disk (exists, regular,
//! readable, non-empty, within S3's single-PUT limit) and given a content type; the paths
//! met lately are remembered, so rows naming the same files cost one look each.

use hashlink::LruCache;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::MAX_FILE_SIZE;
use crate::domain::FileStamp;

/// What the disk says about one attachment path. Rows naming a remembered path share it.
#[derive(Debug, Clone)]
pub(crate) struct FileInfo {
    /// The path as written.
    pub path: Arc<str>,
    pub resolved: Arc<Path>,
    /// The folder the file is opened inside at upload: the files root, or (only with
    /// `--allow-outside-root`, for a file outside it) the file's own folder.
    pub confine: Arc<Path>,
    pub filename: Arc<str>,
    pub size: u64,
    /// Modification time when checked, to notice a file changed before its upload.
    pub mtime_ns: i64,
    pub content_type: Arc<str>,
}

/// How many paths [`Files`] remembers: enough for the files a register names again and again
/// (a site plan on every row) while memory stays flat however many files a manifest names.
const REMEMBERED_PATHS: usize = 4096;

/// Resolves and checks attachment paths: a path met among the last [`REMEMBERED_PATHS`] is
/// not looked at again.
pub(crate) struct Files {
    root: Arc<Path>,
    allow_outside_root: bool,
    cache: LruCache<Arc<str>, Result<FileInfo, String>>,
}

impl Files {
    /// `root` must already be canonical (absolute, symlinks resolved).
    pub fn new(root: PathBuf, allow_outside_root: bool) -> Self {
        Self {
            root: root.into(),
            allow_outside_root,
            cache: LruCache::new(REMEMBERED_PATHS),
        }
    }

    /// The file a manifest path names, or why it cannot be uploaded (a message that
    /// quotes the path as written).
    pub fn check(&mut self, path: &str) -> Result<FileInfo, String> {
        if let Some(known) = self.cache.get(path) {
            return known.clone();
        }
        let path: Arc<str> = Arc::from(path);
        let outcome = self
            .inspect(&path)
            .map(|(resolved, stamp, content_type)| FileInfo {
                filename: filename(&path, &resolved).into(),
                confine: if resolved.starts_with(&self.root) {
                    Arc::clone(&self.root)
                } else {
                    resolved.parent().unwrap_or(&self.root).into()
                },
                path: Arc::clone(&path),
                resolved: resolved.into(),
                size: stamp.size,
                mtime_ns: stamp.mtime_ns,
                content_type: content_type.into(),
            });
        self.cache.insert(path, outcome.clone());
        outcome
    }

    /// The resolved path, size and modification time, and content type of a path as written.
    fn inspect(&self, written: &str) -> Result<(PathBuf, FileStamp, &'static str), String> {
        let path = Path::new(written);
        let outside = !self.allow_outside_root;
        if outside && (path.is_absolute() || path.has_root()) {
            return Err(format!(
                "{written:?} is an absolute path; paths are relative to the files root \
                 (--allow-outside-root lifts this)"
            ));
        }
        if outside && path.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "{written:?} contains \"..\"; paths may not leave the files root \
                 (--allow-outside-root lifts this)"
            ));
        }
        let joined = self.root.join(path);
        let resolved = match joined.canonicalize() {
            Ok(resolved) => resolved,
            Err(err) if is_missing(&err) => return Err(format!("{written:?} does not exist")),
            Err(err) => return Err(format!("{written:?} cannot be read: {}", describe(&err))),
        };
        if outside && !resolved.starts_with(&self.root) {
            return Err(format!(
                "{written:?} resolves to a file outside the files root (through a symlink)"
            ));
        }
        let meta = resolved
            .metadata()
            .map_err(|err| format!("{written:?} cannot be read: {}", describe(&err)))?;
        if meta.is_dir() {
            return Err(format!("{written:?} is a directory, not a file"));
        }
        if !meta.is_file() {
            return Err(format!("{written:?} is not a regular file"));
        }
        let size = meta.len();
        if size == 0 {
            return Err(format!("{written:?} is empty (0 bytes)"));
        }
        if size > MAX_FILE_SIZE {
            return Err(format!(
                "{written:?} is {size} bytes, over the 5 GiB limit of a single upload"
            ));
        }
        let mut file = File::open(&resolved)
            .map_err(|err| format!("{written:?} cannot be read: {}", describe(&err)))?;
        let content_type = match mime_guess::from_path(path).first_raw() {
            Some(by_extension) => by_extension,
            None => {
                let mut head = [0u8; 32];
                let n = read_head(&mut file, &mut head)
                    .map_err(|err| format!("{written:?} cannot be read: {}", describe(&err)))?;
                sniff(&head[..n]).unwrap_or("application/octet-stream")
            }
        };
        Ok((resolved, FileStamp::of(&meta), content_type))
    }
}

/// The file name to announce: the last part of the path as written.
fn filename(written: &str, resolved: &Path) -> String {
    Path::new(written)
        .file_name()
        .or_else(|| resolved.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| written.to_owned())
}

fn is_missing(err: &io::Error) -> bool {
    // ENOTDIR: a path component is a file ("photo.jpg/x"), which is as good as missing.
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// An I/O error in words, without the OS error number.
fn describe(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => err.to_string(),
    }
}

/// Reads up to `buf.len()` bytes from the start of a file.
pub(crate) fn read_head(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// The content type announced by a file's first bytes, for the common formats of a
/// defect register (photos, plans, archives, videos).
pub(crate) fn sniff(head: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\xFF\xD8\xFF", "image/jpeg"),
        (b"\x89PNG\r\n\x1A\n", "image/png"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        (b"II*\x00", "image/tiff"),
        (b"MM\x00*", "image/tiff"),
        (b"BM", "image/bmp"),
        (b"\x1F\x8B", "application/gzip"),
    ];
    if let Some((_, kind)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Some(kind);
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return match &head[8..12] {
            b"heic" | b"heix" | b"heim" | b"heis" => Some("image/heic"),
            b"mif1" | b"msf1" | b"heif" => Some("image/heif"),
            b"qt  " => Some("video/quicktime"),
            _ => Some("video/mp4"),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_names_common_formats_and_gives_up_on_text() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0\0\x10JFIF"), Some("image/jpeg"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1A\n\0\0\0\rIHDR"), Some("image/png"));
        assert_eq!(sniff(b"%PDF-1.4\n"), Some("application/pdf"));
        assert_eq!(sniff(b"\0\0\0\x18ftypheic\0\0\0\0"), Some("image/heic"));
        assert_eq!(sniff(b"ref,project_id,title"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn a_path_met_lately_is_served_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("a.jpg"), b"\xFF\xD8\xFF").unwrap();
        let mut files = Files::new(root.clone(), false);
        let first = files.check("a.jpg").unwrap();
        assert_eq!(first.size, 3);
        std::fs::remove_file(root.join("a.jpg")).unwrap();
        let second = files.check("a.jpg").unwrap();
        assert_eq!(*second.resolved, *root.join("a.jpg"));
        assert!(Arc::ptr_eq(&first.resolved, &second.resolved));
    }

    #[test]
    fn a_file_without_a_known_extension_is_typed_by_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("scan"), b"%PDF-1.7\n%...").unwrap();
        std::fs::write(root.join("notes.unknownext"), b"plain words").unwrap();
        let mut files = Files::new(root, false);
        assert_eq!(
            &*files.check("scan").unwrap().content_type,
            "application/pdf"
        );
        assert_eq!(
            &*files.check("notes.unknownext").unwrap().content_type,
            "application/octet-stream"
        );
    }
}
