//! Crash-safe file creation shared by the GGUF and safetensors writers.

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
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
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
