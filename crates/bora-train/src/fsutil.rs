//! Crash-safe file and directory publication for everything bora-train writes itself.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{io_err, Result};

/// Writes `bytes` to a temporary name beside `path`, fsyncs, renames over `path` and fsyncs
/// the directory: a reader sees the old file or the new one, never a torn one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        // Best effort: the temporary file is garbage either way.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path)
}

/// Makes a rename or creation inside `path`'s directory durable.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Publishes a directory atomically: `fill` writes its files into a temporary sibling,
/// which is fsynced and renamed to `dest` only once complete. An existing `dest` is moved
/// aside first and deleted only after the new one is in place, so at every moment one
/// complete version exists (between the two renames, the old one under its aside name).
/// On error the temporary directory is removed.
pub(crate) fn publish_dir(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.partial-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    for stale in [&tmp, &old] {
        if stale.exists() {
            fs::remove_dir_all(stale).map_err(io_err(stale))?;
        }
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = fill(&tmp).and_then(|()| {
        sync_dir(&tmp)?;
        let had_old = dest.exists();
        if had_old {
            fs::rename(dest, &old).map_err(io_err(dest))?;
        }
        fs::rename(&tmp, dest).map_err(io_err(dest))?;
        sync_dir(parent)?;
        if had_old {
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(())
    });
    if result.is_err() {
        // Best effort: a leftover is also removed by the next publish of the same name.
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

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
