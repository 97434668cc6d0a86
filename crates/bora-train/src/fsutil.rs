//! Crash-safe file and directory publication for everything bora-train writes itself.

use std::fs;
use std::path::Path;

use crate::error::{io_err, Result};

pub(crate) use bora_formats::atomic::{publish_dir, write_file as write_atomic};

/// Whether a directory entry is a temporary of [`publish_dir`] or [`write_atomic`] left by
/// a killed process.
pub(crate) fn is_leftover(name: &str) -> bool {
    name.starts_with('.')
        && (name.contains(".partial-") || name.contains(".old-") || name.ends_with(".partial"))
}

/// Removes a file or a directory tree.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(io_err(path))
    } else {
        fs::remove_file(path).map_err(io_err(path))
    }
}

#[cfg(test)]
thread_local! {
    /// Test-only fault injection: the number of checkpoint files that may still be written
    /// before the next one fails, simulating a full disk mid-checkpoint.
    pub(crate) static FILES_BEFORE_FAULT: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

/// Called before each file of a checkpoint is written; fails when a test asked for a fault.
#[cfg(test)]
pub(crate) fn before_file_write(path: &Path) -> Result<()> {
    match FILES_BEFORE_FAULT.with(|c| c.get()) {
        Some(0) => Err(io_err(path)(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "injected fault: no space left on device",
        ))),
        Some(left) => {
            FILES_BEFORE_FAULT.with(|c| c.set(Some(left - 1)));
            Ok(())
        }
        None => Ok(()),
    }
}

#[cfg(not(test))]
#[inline]
pub(crate) fn before_file_write(_path: &Path) -> Result<()> {
    Ok(())
}
