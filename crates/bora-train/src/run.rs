//! The run directory, the unit every later command reads:
//!
//! ```text
//! runs/NAME/config.toml                      resolved config
//! runs/NAME/metrics.jsonl                    one JSON object per optimizer step
//! runs/NAME/events.out.tfevents.*            TensorBoard
//! runs/NAME/checkpoints/step-N/, latest      resumable states
//! runs/NAME/adapter/                         the final adapter, PEFT layout
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::RunConfig;
use crate::error::{io_err, Result, TrainError};
use crate::fsutil::write_atomic;

pub const CONFIG_FILE: &str = "config.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const ADAPTER_DIR: &str = "adapter";

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates `runs_root/NAME` for `config` and saves its resolved config. An existing run
    /// directory is reused only if it was made for the same run (a resume,
    /// [`RunConfig::same_run`]); a different config there is an error rather than a silent
    /// mix of two runs. A reused directory's file is rewritten when its text differs: the
    /// tracking settings changed, or an older bora wrote it without keys added since.
    pub fn create(runs_root: &Path, config: &RunConfig) -> Result<Self> {
        config.validate()?;
        let root = runs_root.join(&config.name);
        let text = config.to_toml()?;
        let config_path = root.join(CONFIG_FILE);
        match fs::read_to_string(&config_path) {
            Ok(existing) if existing == text => {}
            Ok(existing)
                if RunConfig::from_toml(&existing).is_ok_and(|old| old.same_run(config)) =>
            {
                write_atomic(&config_path, text.as_bytes())?;
            }
            Ok(_) => {
                return Err(TrainError::Config {
                    key: "name".into(),
                    reason: format!(
                        "{} already holds a run with a different config; pick another name or \
                         delete that directory",
                        root.display()
                    ),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(root.join(CHECKPOINTS_DIR)).map_err(io_err(&root))?;
                write_atomic(&config_path, text.as_bytes())?;
            }
            Err(e) => return Err(io_err(&config_path)(e)),
        }
        Ok(Self { root })
    }

    /// Opens an existing run directory and reads its config.
    pub fn open(root: impl Into<PathBuf>) -> Result<(Self, RunConfig)> {
        let root = root.into();
        let config = RunConfig::load(root.join(CONFIG_FILE))?;
        Ok((Self { root }, config))
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR)
    }

    pub fn adapter_dir(&self) -> PathBuf {
        self.root.join(ADAPTER_DIR)
    }
}
