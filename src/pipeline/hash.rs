//! A file's size and MD5 (base64, as Visibuild and S3 want it), read from its real bytes in
//! fixed-size chunks: memory does not grow with the file.

use base64::Engine;
use md5::{Digest, Md5};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Bytes read per chunk while hashing.
pub const HASH_CHUNK: usize = 1024 * 1024;

/// What a file looked like when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub fn stamp(path: &Path) -> Result<FileStamp, FileError> {
    let meta = std::fs::metadata(path).map_err(|source| FileError {
        path: path.to_path_buf(),
        source,
    })?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    Ok(FileStamp {
        size: meta.len(),
        mtime_ns,
    })
}

/// Size and base64 MD5 of the file's bytes, streamed.
pub fn md5_file(path: &Path) -> Result<(u64, String), FileError> {
    let err = |source| FileError {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    // A small file gets a small buffer (zeroing 1 MiB per 20 KB photo shows in profiles).
    let len = file
        .metadata()
        .map(|m| m.len())
        .unwrap_or(HASH_CHUNK as u64);
    let mut buf = vec![0u8; (len as usize).clamp(8 * 1024, HASH_CHUNK)];
    let mut hasher = Md5::new();
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let digest = hasher.finalize();
    Ok((
        size,
        base64::engine::general_purpose::STANDARD.encode(digest),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_is_base64_of_the_bytes_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        // md5("hello") = 5d41402abc4b2a76b9719d911017c592
        assert_eq!(
            md5_file(&path).unwrap(),
            (5, "XUFAKrxLKna5cZ2REBfFkg==".into())
        );
        let big = vec![7u8; HASH_CHUNK * 2 + 3];
        std::fs::write(&path, &big).unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&big));
        assert_eq!(md5_file(&path).unwrap(), (big.len() as u64, expected));
    }
}
