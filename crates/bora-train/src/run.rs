//! Creating and opening a run directory ([`bora_run::RunDir`] names its files): the
//! resolved config is what makes a directory a run.

use std::fs;
use std::path::{Path, PathBuf};

use bora_run::RunDir;

use crate::config::RunConfig;
use crate::error::{io_err, Result, TrainError};
use crate::fsutil::write_atomic;

/// Creates `runs_root/NAME` for `config` and saves its resolved config. An existing run
/// directory is reused only if it was made for the same run (a resume,
/// [`RunConfig::same_run`]); a different config there is an error rather than a silent
/// mix of two runs. A reused directory's file is rewritten when its text differs: the
/// tracking settings changed, or an older bora wrote it without keys added since.
pub fn create_run_dir(runs_root: &Path, config: &RunConfig) -> Result<RunDir> {
    create_run_dir_noted(runs_root, config, &[])
}

/// [`create_run_dir`] with `notes` (the settings bora chose and why) as comments at the top
/// of the saved config, so the file says where each value came from.
pub fn create_run_dir_noted(
    runs_root: &Path,
    config: &RunConfig,
    notes: &[String],
) -> Result<RunDir> {
    config.validate()?;
    let comments: String = notes.iter().map(|n| format!("# chosen: {n}\n")).collect();
    let text = format!("{comments}{}", config.to_toml()?);
    let run = RunDir::at(runs_root.join(&config.name));
    let config_path = run.config_path();
    match fs::read_to_string(&config_path) {
        Ok(existing) if existing == text => {}
        Ok(existing) if RunConfig::from_toml(&existing).is_ok_and(|old| old.same_run(config)) => {
            write_atomic(&config_path, text.as_bytes())?;
        }
        Ok(_) => {
            return Err(TrainError::Config {
                key: "name".into(),
                reason: format!(
                    "{} already holds a run with a different config; pick another name or \
                     delete that directory",
                    run.path().display()
                ),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(run.checkpoints_dir()).map_err(io_err(run.path()))?;
            write_atomic(&config_path, text.as_bytes())?;
        }
        Err(e) => return Err(io_err(&config_path)(e)),
    }
    Ok(run)
}

/// Opens an existing run directory and reads its config.
pub fn open_run_dir(root: impl Into<PathBuf>) -> Result<(RunDir, RunConfig)> {
    let run = RunDir::at(root);
    let config = RunConfig::load(run.config_path())?;
    Ok((run, config))
}
