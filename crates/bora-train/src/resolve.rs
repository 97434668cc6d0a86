//! A new run's config from the command line: the config file (or the defaults), the input
//! paths, the run directory, then `key = value` overrides in the order given, validated
//! once complete. Each typed flag becomes the TOML text [`RunConfig::apply_override`] reads,
//! so a flag and `--set` of the same key mean the same thing.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use crate::config::RunConfig;
use crate::defaults::Unset;
use crate::error::{Result, TrainError};

/// The settings of a new run as flags give them.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// The run config TOML the flags complete; the defaults without one.
    pub config_file: Option<PathBuf>,
    /// `runs_root/NAME`: its last component is the run name.
    pub out: PathBuf,
    pub model: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub val: Option<PathBuf>,
    overrides: Vec<(String, String)>,
}

impl NewRun {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            ..Self::default()
        }
    }

    /// An integer or boolean key.
    pub fn value(&mut self, key: &str, value: Option<impl Display>) {
        if let Some(v) = value {
            self.overrides.push((key.to_owned(), v.to_string()));
        }
    }

    /// A float key, written so TOML reads it back as a float (`1` would be an integer).
    pub fn float(&mut self, key: &str, value: Option<f64>) {
        if let Some(x) = value {
            let s = x.to_string();
            let text = if s.contains(['.', 'e', 'E']) || !x.is_finite() {
                s
            } else {
                format!("{s}.0")
            };
            self.overrides.push((key.to_owned(), text));
        }
    }

    /// A string key.
    pub fn string(&mut self, key: &str, value: Option<&str>) {
        if let Some(s) = value {
            self.overrides.push((key.to_owned(), format!("{s:?}")));
        }
    }

    /// A list-of-names key from a comma-separated flag (`q,k,v`), lowercased.
    pub fn names(&mut self, key: &str, list: Option<&str>) {
        if let Some(list) = list {
            let items: Vec<String> = list
                .split(',')
                .map(|t| format!("{:?}", t.trim().to_lowercase()))
                .collect();
            self.overrides
                .push((key.to_owned(), format!("[{}]", items.join(", "))));
        }
    }

    /// A `--set KEY=VALUE` item, applied after every typed flag given before it.
    pub fn set(&mut self, item: &str) -> Result<()> {
        let (key, value) = item.split_once('=').ok_or_else(|| TrainError::Flag {
            flag: format!("--set {item}"),
            what: "expected KEY=VALUE".into(),
        })?;
        self.overrides
            .push((key.trim().to_owned(), value.trim().to_owned()));
        Ok(())
    }

    /// The validated config and the directory its run directory goes in. Input paths that
    /// exist are stored absolute so `--resume` works from any directory; a Hub id is kept as
    /// given (its revision is pinned when the model is located).
    pub fn resolve(&self) -> Result<(PathBuf, RunConfig)> {
        let mut config = match &self.config_file {
            Some(path) => RunConfig::load_unchecked(path)?,
            None => RunConfig::default(),
        };
        if let Some(model) = &self.model {
            config.model.path = absolute_if_local(model).display().to_string();
            config.model.revision.clear();
        }
        if let Some(data) = &self.data {
            config.data.train = absolute_if_local(data);
        }
        if let Some(val) = &self.val {
            config.data.eval = absolute_if_local(val);
        }
        let out = &self.out;
        let name = out.file_name().ok_or_else(|| TrainError::Flag {
            flag: format!("--out {}", out.display()),
            what: "needs a directory name".into(),
        })?;
        config.name = name.to_string_lossy().into_owned();
        let runs_root = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        for (key, value) in &self.overrides {
            config.apply_override(key, value)?;
        }
        config.validate()?;
        Ok((runs_root, config))
    }
}

impl NewRun {
    /// The adaptive settings ([`crate::ADAPTIVE_KEYS`]) neither the config file nor a flag
    /// gives, which bora then chooses for the model and data. A `--val` file counts as giving
    /// the validation split.
    pub fn unset(&self) -> Result<Unset> {
        let mut given: Vec<String> = self.overrides.iter().map(|(k, _)| k.clone()).collect();
        if let Some(path) = &self.config_file {
            given.extend(RunConfig::keys_in_file(path)?);
        }
        if self.val.is_some() {
            given.push("data.val_fraction".into());
        }
        Ok(Unset::except(given.iter().map(String::as_str)))
    }
}

fn absolute_if_local(path: &Path) -> PathBuf {
    if !path.exists() {
        return path.to_path_buf();
    }
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_flags_become_the_toml_their_keys_read() {
        let mut run = NewRun::new("runs/r");
        run.float("optim.lr", Some(1.0));
        run.float("lora.alpha", Some(2.5e-5));
        run.names("lora.targets", Some("Q, down"));
        run.string("optim.schedule", Some("cosine"));
        run.value("train.seed", Some(7));
        run.set("optim.eps=1e-6").unwrap();
        let texts: Vec<&str> = run.overrides.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            texts,
            [
                "1.0",
                "0.000025",
                r#"["q", "down"]"#,
                r#""cosine""#,
                "7",
                "1e-6"
            ]
        );
        let unset = run.unset().unwrap();
        assert!(!unset.contains("optim.lr") && !unset.contains("train.seed"));
        assert!(unset.contains("train.epochs") && unset.contains("data.val_fraction"));
        assert!(run
            .set("optim.eps")
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
    }
}
