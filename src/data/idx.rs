//! Reader for the IDX format of (Fashion-)MNIST, optionally gzipped.
//!
//! An IDX file is a big-endian header (magic 0x0000_08NN where NN is the number of
//! dimensions, then one u32 per dimension) followed by the u8 payload.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IdxError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an unsigned-byte IDX file: {why}")]
    Format { path: PathBuf, why: String },
}

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file, gunzipping it if it starts with the gzip magic bytes.
///
/// # Errors
/// I/O failures, a wrong magic number or type code, or a payload whose length does not
/// match the header.
pub fn read_idx(path: &Path) -> Result<IdxArray, IdxError> {
    let io = |source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(io)?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|why| IdxError::Format {
        path: path.to_path_buf(),
        why,
    })
}

/// Parses an in-memory (uncompressed) IDX file.
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "{} bytes is shorter than the 4-byte magic number",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "magic number starts with {:#04x} {:#04x}, expected 0x00 0x00",
            bytes[0], bytes[1]
        ));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "element type code {:#04x}, expected 0x08 (unsigned byte)",
            bytes[2]
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(format!("truncated header for {ndim} dimension(s)"));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected: usize = dims.iter().product();
    let payload = &bytes[header..];
    if payload.len() != expected {
        return Err(format!(
            "header {dims:?} implies {expected} bytes of data, found {}",
            payload.len()
        ));
    }
    Ok(IdxArray {
        dims,
        data: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn encode(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_header_and_payload() {
        let a = parse_idx(&encode(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(parse_idx(&[0, 0]).unwrap_err().contains("shorter"));
        assert!(parse_idx(&encode(&[2], &[1, 2, 3]))
            .unwrap_err()
            .contains("implies 2 bytes"));
        let mut bad = encode(&[1], &[1]);
        bad[2] = 0x0d;
        assert!(parse_idx(&bad).unwrap_err().contains("type code"));
        assert!(parse_idx(b"PK\x03\x04").unwrap_err().contains("magic"));
    }

    #[test]
    fn reads_gzipped_files() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&encode(&[3], &[7, 8, 9])).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        assert_eq!(read_idx(&path).unwrap().data, vec![7, 8, 9]);
    }
}
