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
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    renamed: bool,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        sweep_leftovers(dest);
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

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
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
    pub fn commit(self) -> Result<()> {
        self.commit_checked(|_| Ok(()))
    }

    /// [`AtomicFile::commit`], but `check` first reads the complete, synced file under its
    /// temporary name, and the rename happens only when it passes: the destination never
    /// holds a file that failed its check or whose check was cut short by a kill. On error the
    /// temporary file is removed (unless `check` moved it away).
    pub(crate) fn commit_checked<T, E: From<FormatError>>(
        mut self,
        check: impl FnOnce(&Path) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
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
        let value = check(&self.tmp)?;
        fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        self.renamed = true;
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
        Ok(value)
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
    sweep_leftovers(dest);
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

/// What a killed writer of `dest` can leave beside it: an [`AtomicFile`] temporary
/// (`.NAME.PID.partial`), a [`publish_dir`] temporary (`.NAME.partial-PID`) or the previous
/// version moved aside (`.NAME.old-PID`).
#[derive(Debug, PartialEq)]
enum Leftover {
    Temporary(u32),
    Aside(u32),
}

fn leftover_of(name: &str, entry: &str) -> Option<Leftover> {
    let rest = entry.strip_prefix('.')?.strip_prefix(name)?;
    let pid = |s: &str| {
        s.parse::<u32>()
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(p) = rest
        .strip_prefix('.')
        .and_then(|r| r.strip_suffix(".partial"))
    {
        return pid(p).map(Leftover::Temporary);
    }
    if let Some(p) = rest.strip_prefix(".partial-") {
        return pid(p).map(Leftover::Temporary);
    }
    rest.strip_prefix(".old-")
        .and_then(pid)
        .map(Leftover::Aside)
}

/// Whether process `pid` is known to have exited. Only where `/proc` shows processes
/// (Linux); elsewhere every process counts as running, so nothing is ever removed there.
fn exited(pid: u32) -> bool {
    let proc = Path::new("/proc");
    pid != std::process::id() && proc.join("self").exists() && !proc.join(pid.to_string()).exists()
}

/// Removes the leftovers of processes that died while writing `dest` (killed mid-write or
/// mid-check), before a new write of it begins: without this, each kill would leave a hidden
/// copy of the output, as large as the output, forever. A process that is still running
/// keeps its temporaries. An aside copy is the only complete version when its writer died
/// between its two renames, so it is put back when `dest` is missing, and removed otherwise.
/// Best effort: what cannot be removed is garbage, never a reason to refuse the write.
fn sweep_leftovers(dest: &Path) {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(kind) = file_name.to_str().and_then(|e| leftover_of(name, e)) else {
            continue;
        };
        let path = entry.path();
        match kind {
            Leftover::Temporary(pid) | Leftover::Aside(pid) if !exited(pid) => {}
            Leftover::Aside(_) if !dest.exists() => {
                let _ = fs::rename(&path, dest);
            }
            _ => {
                let _ = match entry.file_type() {
                    Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                    _ => fs::remove_file(&path),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names_are_recognised_exactly() {
        assert_eq!(
            leftover_of("m.gguf", ".m.gguf.123.partial"),
            Some(Leftover::Temporary(123))
        );
        assert_eq!(
            leftover_of("out", ".out.partial-77"),
            Some(Leftover::Temporary(77))
        );
        assert_eq!(leftover_of("out", ".out.old-9"), Some(Leftover::Aside(9)));
        for other in [
            "m.gguf",
            ".m.gguf.12x.partial",
            ".m.gguf.partial",
            ".m.gguf.+1.partial",
            ".xm.gguf.1.partial",
            ".m.gguf.1.partial.2.partial",
            ".m.gguf.old-",
        ] {
            assert_eq!(leftover_of("m.gguf", other), None, "{other}");
        }
    }

    #[test]
    fn leftovers_of_dead_processes_go_and_a_live_ones_stay() {
        let dir = std::env::temp_dir().join(format!("bora-sweep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // No process has this id: Linux's pid_max is at most 2^22.
        let dead = 1u32 << 30;
        let live = std::process::id();
        let dest = dir.join("m.gguf");
        fs::write(dir.join(format!(".m.gguf.{dead}.partial")), b"torn").unwrap();
        fs::create_dir(dir.join(format!(".m.gguf.partial-{dead}"))).unwrap();
        fs::write(dir.join(format!(".m.gguf.{live}.partial")), b"mine").unwrap();
        fs::write(dir.join(format!(".other.{dead}.partial")), b"not ours").unwrap();
        fs::write(dir.join(format!(".m.gguf.old-{dead}")), b"previous").unwrap();
        sweep_leftovers(&dest);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        if Path::new("/proc/self").exists() {
            // The aside copy was the only complete version, so it is back under its name.
            let want = [
                format!(".m.gguf.{live}.partial"),
                format!(".other.{dead}.partial"),
                "m.gguf".to_string(),
            ];
            assert_eq!(left, want);
            assert_eq!(fs::read(&dest).unwrap(), b"previous");
        } else {
            assert_eq!(left.len(), 5);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
