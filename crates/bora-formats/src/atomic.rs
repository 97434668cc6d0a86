//! Crash-safe writes shared by every crate that writes: the GGUF and safetensors writers,
//! checkpoints and run files, exports, tracking state. A reader (or a resumed run) sees the
//! old version or the new one, never a torn one, and nothing the user had is lost.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};

/// A file written under a temporary name next to its destination and renamed into place
/// only after its bytes are synced, so a reader never sees a half-written file and a crash
/// leaves the previous version intact. Dropped without [`AtomicFile::commit`], it removes
/// the temporary file.
pub(crate) struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    renamed: bool,
}

impl AtomicFile {
    pub(crate) fn create(dest: &Path) -> Result<Self> {
        let name = dest.file_name().ok_or_else(|| FormatError::Invalid {
            path: dest.to_path_buf(),
            what: "destination has no file name".into(),
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.partial", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        let file = File::create(&tmp).map_err(|source| FormatError::Io {
            path: tmp.clone(),
            source,
        })?;
        Ok(Self {
            dest: dest.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            renamed: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dest
    }

    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let tmp = &self.tmp;
        match self.out.as_mut() {
            Some(out) => out.write_all(bytes).map_err(|source| FormatError::Io {
                path: tmp.clone(),
                source,
            }),
            None => Err(FormatError::Invalid {
                path: self.dest.clone(),
                what: "write to a file handed to another writer".into(),
            }),
        }
    }

    /// For libraries that write by path (the safetensors crate streams to a path it opens
    /// itself): `write` fills the temporary file, then it is committed as usual.
    pub(crate) fn write_via_path(mut self, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        drop(self.out.take());
        write(&self.tmp)?;
        self.commit()
    }

    /// Flushes, fsyncs, renames over the destination and fsyncs the directory so the rename
    /// itself survives a power loss.
    pub(crate) fn commit(mut self) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FormatError::Io { path, source }
        };
        let file = match self.out.take() {
            Some(out) => out.into_inner().map_err(|e| FormatError::Io {
                path: self.tmp.clone(),
                source: e.into_error(),
            })?,
            None => File::open(&self.tmp).map_err(io(&self.tmp))?,
        };
        file.sync_all().map_err(io(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        self.renamed = true;
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.renamed {
            drop(self.out.take());
            // Best effort: the temporary file is garbage whether or not removal succeeds.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FormatError {
    let path = path.to_path_buf();
    move |source| FormatError::Io { path, source }
}

/// Writes `bytes` to `path` through an [`AtomicFile`]: temporary name, fsync, rename,
/// directory fsync.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Makes the creations and renames inside `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Publishes a directory atomically: `fill` writes its files into a temporary sibling, which
/// is fsynced and renamed to `dest` only once complete. An existing `dest` is moved aside
/// first and deleted only after the new one is in place, so at every moment one complete
/// version exists (between the two renames, under its aside name). On error the temporary
/// directory is removed and `dest` is untouched. Generic over the caller's error so `fill`
/// can fail with the caller's own errors.
pub fn publish_dir<T, E: From<FormatError>>(
    dest: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let parent = match dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| FormatError::Invalid {
            path: dest.to_path_buf(),
            what: "the output path has no directory name".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.partial-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    for stale in [&tmp, &old] {
        if stale.exists() {
            fs::remove_dir_all(stale).map_err(io_error(stale))?;
        }
    }
    fs::create_dir_all(&tmp).map_err(io_error(&tmp))?;
    let result = fill(&tmp).and_then(|value| {
        sync_dir(&tmp)?;
        let had_old = dest.exists();
        if had_old {
            fs::rename(dest, &old).map_err(io_error(dest))?;
        }
        fs::rename(&tmp, dest).map_err(io_error(dest))?;
        sync_dir(&parent)?;
        if had_old {
            fs::remove_dir_all(&old).map_err(io_error(&old))?;
        }
        Ok(value)
    });
    if result.is_err() {
        // Best effort: a leftover is also removed by the next publish of the same name.
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}
