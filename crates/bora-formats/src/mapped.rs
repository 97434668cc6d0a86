//! File bytes, memory-mapped (or owned, for data already in memory), shared by the readers.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{FormatError, Result};

pub(crate) enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// Maps `path` read-only. An empty file is not mapped (mmap rejects length 0); the parsers
/// then report it as truncated.
pub(crate) fn map_file(path: &Path) -> Result<Bytes> {
    let io = |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Ok(Bytes::Owned(Vec::new()));
    }
    // SAFETY: the map is read-only and private to this process. Like every mmap reader
    // (llama.cpp, the safetensors library) we rely on nobody truncating a model file while it
    // is open; all offsets are validated against the length seen here.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok(Bytes::Mapped(map))
}
