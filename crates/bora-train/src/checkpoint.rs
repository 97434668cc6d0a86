//! Checkpoints: `checkpoints/step-N/` holds the adapter in PEFT layout plus everything a
//! resumed run needs to continue bit-for-bit (optimizer moments, RNG, data position).
//!
//! A checkpoint directory is built under a temporary name and renamed into place when
//! complete; then the `latest` pointer is replaced atomically; only then are old
//! checkpoints deleted. A crash at any point leaves `latest` naming a complete checkpoint.

use std::fs;
use std::path::{Path, PathBuf};

use bora_data::DataPosition;
use bora_formats::safetensors::{write_safetensors, Dtype, Safetensors, TensorData};
use serde::{Deserialize, Serialize};

use bora_run::{
    checkpoint_dir_name, parse_checkpoint_dir_name as parse_step_dir, ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE, LATEST_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE,
};

use crate::adapter::AdapterConfig;
use crate::error::{io_err, Result, TrainError};
use crate::fsutil::{before_file_write, is_leftover, publish_dir, remove_any, write_atomic};
use crate::optim::AdamWState;
use crate::rng::RngState;

/// A trainable tensor's name (PEFT naming) and shape, as the model declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// A named f32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainerState {
    step: u64,
    optimizer_step: u64,
    rng: RngState,
    data: DataPosition,
    #[serde(default)]
    elapsed_s: f64,
}

/// One saved training state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Optimizer steps completed.
    pub step: u64,
    pub adapter_config: AdapterConfig,
    /// The LoRA tensors, in the model's parameter order.
    pub params: Vec<NamedTensor>,
    /// Moments aligned with `params`.
    pub optimizer: AdamWState,
    pub rng: RngState,
    pub data: DataPosition,
    /// Wall-clock seconds of training up to this step, over every session of the run.
    pub elapsed_s: f64,
}

/// The adapter files PEFT loads: `adapter_config.json` and `adapter_model.safetensors`
/// (F32, with the `{"format": "pt"}` metadata torch writes).
pub fn write_adapter_files(
    dir: &Path,
    config: &AdapterConfig,
    params: &[NamedTensor],
) -> Result<()> {
    check_lengths(dir, params)?;
    let path = dir.join(ADAPTER_CONFIG_FILE);
    before_file_write(&path)?;
    let json =
        serde_json::to_string_pretty(&config.to_json()).map_err(|e| TrainError::Invalid {
            path: path.clone(),
            what: e.to_string(),
        })?;
    write_atomic(&path, json.as_bytes())?;
    write_f32_tensors(
        &dir.join(ADAPTER_WEIGHTS_FILE),
        params.iter().map(|t| (t.name.clone(), t)),
    )
}

/// Publishes the final adapter of a run (`runs/NAME/adapter/`) atomically.
pub fn save_adapter(dest: &Path, config: &AdapterConfig, params: &[NamedTensor]) -> Result<()> {
    publish_dir(dest, |tmp| write_adapter_files(tmp, config, params))
}

fn check_lengths(dir: &Path, params: &[NamedTensor]) -> Result<()> {
    for t in params {
        let n: usize = t.shape.iter().product();
        if n != t.values.len() {
            return Err(TrainError::Invalid {
                path: dir.to_path_buf(),
                what: format!(
                    "tensor `{}` has shape {:?} but {} values",
                    t.name,
                    t.shape,
                    t.values.len()
                ),
            });
        }
    }
    Ok(())
}

fn write_f32_tensors<'a>(
    path: &Path,
    tensors: impl Iterator<Item = (String, &'a NamedTensor)>,
) -> Result<()> {
    before_file_write(path)?;
    let encoded = tensors
        .map(|(name, t)| {
            Ok((
                name,
                TensorData::from_f32(Dtype::F32, t.shape.clone(), &t.values)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = [("format".to_owned(), "pt".to_owned())]
        .into_iter()
        .collect();
    write_safetensors(path, &encoded, Some(metadata))?;
    Ok(())
}

fn moment_names(param: &str) -> [String; 2] {
    [format!("{param}.exp_avg"), format!("{param}.exp_avg_sq")]
}

impl Checkpoint {
    /// Writes `checkpoints_dir/step-N/`, points `latest` at it, then keeps only the newest
    /// `keep` checkpoints (and drops any of a later step, left by a run that was killed
    /// after saving them and resumed from an earlier one). Returns the directory.
    pub fn save(&self, checkpoints_dir: &Path, keep: usize) -> Result<PathBuf> {
        self.check_consistent(checkpoints_dir)?;
        fs::create_dir_all(checkpoints_dir).map_err(io_err(checkpoints_dir))?;
        let name = checkpoint_dir_name(self.step);
        let dest = checkpoints_dir.join(&name);
        publish_dir(&dest, |tmp| self.write_files(tmp))?;
        let latest = checkpoints_dir.join(LATEST_FILE);
        before_file_write(&latest)?;
        write_atomic(&latest, format!("{name}\n").as_bytes())?;
        prune(checkpoints_dir, self.step, keep.max(1))?;
        Ok(dest)
    }

    fn check_consistent(&self, dir: &Path) -> Result<()> {
        check_lengths(dir, &self.params)?;
        let (m, v) = (&self.optimizer.exp_avg, &self.optimizer.exp_avg_sq);
        if m.len() != self.params.len() || v.len() != self.params.len() {
            return Err(TrainError::Mismatch {
                what: format!(
                    "checkpoint has {} tensors but optimizer state for {}",
                    self.params.len(),
                    m.len()
                ),
            });
        }
        for ((t, m), v) in self.params.iter().zip(m).zip(v) {
            if m.len() != t.values.len() || v.len() != t.values.len() {
                return Err(TrainError::Mismatch {
                    what: format!(
                        "optimizer state of `{}` has {}/{} elements, the tensor {}",
                        t.name,
                        m.len(),
                        v.len(),
                        t.values.len()
                    ),
                });
            }
        }
        Ok(())
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        write_adapter_files(dir, &self.adapter_config, &self.params)?;
        let moments: Vec<(String, NamedTensor)> = self
            .params
            .iter()
            .zip(
                self.optimizer
                    .exp_avg
                    .iter()
                    .zip(&self.optimizer.exp_avg_sq),
            )
            .flat_map(|(t, (m, v))| {
                let [mn, vn] = moment_names(&t.name);
                let tensor = |values: &Vec<f32>| NamedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    values: values.clone(),
                };
                [(mn, tensor(m)), (vn, tensor(v))]
            })
            .collect();
        write_f32_tensors(
            &dir.join(OPTIMIZER_FILE),
            moments.iter().map(|(n, t)| (n.clone(), t)),
        )?;
        let state = TrainerState {
            step: self.step,
            optimizer_step: self.optimizer.step,
            rng: self.rng.clone(),
            data: self.data,
            elapsed_s: self.elapsed_s,
        };
        let path = dir.join(TRAINER_STATE_FILE);
        before_file_write(&path)?;
        let json = serde_json::to_string_pretty(&state).map_err(|e| TrainError::Invalid {
            path: path.clone(),
            what: e.to_string(),
        })?;
        Ok(write_atomic(&path, json.as_bytes())?)
    }

    /// Loads a checkpoint directory, checking that every file is there and that it holds
    /// exactly the tensors `expected` lists, with their shapes. Tensors come back in the
    /// order of `expected`.
    pub fn load(dir: &Path, expected: &[ParamSpec]) -> Result<Self> {
        for file in [
            ADAPTER_CONFIG_FILE,
            ADAPTER_WEIGHTS_FILE,
            OPTIMIZER_FILE,
            TRAINER_STATE_FILE,
        ] {
            if !dir.join(file).is_file() {
                return Err(TrainError::MissingCheckpointFile {
                    dir: dir.to_path_buf(),
                    file,
                });
            }
        }
        let state_path = dir.join(TRAINER_STATE_FILE);
        let state: TrainerState = read_json(&state_path)?;
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let adapter_config =
            AdapterConfig::from_json(&read_json(&config_path)?).map_err(|what| {
                TrainError::Invalid {
                    path: config_path,
                    what,
                }
            })?;
        if let Some(step) = dir
            .file_name()
            .and_then(|n| parse_step_dir(&n.to_string_lossy()))
        {
            if step != state.step {
                return Err(TrainError::Invalid {
                    path: state_path,
                    what: format!(
                        "records step {} inside {}",
                        state.step,
                        checkpoint_dir_name(step)
                    ),
                });
            }
        }

        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let names: Vec<String> = expected.iter().map(|s| s.name.clone()).collect();
        let params = read_f32_tensors(&weights_path, expected, &names)?;
        let optimizer_path = dir.join(OPTIMIZER_FILE);
        let mut moment_specs = Vec::with_capacity(2 * expected.len());
        let mut moment_names_all = Vec::with_capacity(2 * expected.len());
        for spec in expected {
            for n in moment_names(&spec.name) {
                moment_specs.push(spec.clone());
                moment_names_all.push(n);
            }
        }
        let moments = read_f32_tensors(&optimizer_path, &moment_specs, &moment_names_all)?;
        let mut exp_avg = Vec::with_capacity(expected.len());
        let mut exp_avg_sq = Vec::with_capacity(expected.len());
        let mut it = moments.into_iter();
        while let (Some(m), Some(v)) = (it.next(), it.next()) {
            exp_avg.push(m.values);
            exp_avg_sq.push(v.values);
        }
        Ok(Self {
            step: state.step,
            adapter_config,
            params,
            optimizer: AdamWState {
                step: state.optimizer_step,
                exp_avg,
                exp_avg_sq,
            },
            rng: state.rng,
            data: state.data,
            elapsed_s: state.elapsed_s,
        })
    }

    /// Loads the checkpoint `latest` points to, or `None` when the run has none yet.
    pub fn load_latest(checkpoints_dir: &Path, expected: &[ParamSpec]) -> Result<Option<Self>> {
        latest_checkpoint(checkpoints_dir)?
            .map(|dir| Self::load(&dir, expected))
            .transpose()
    }
}

/// The directory `latest` names, or `None` when no checkpoint was completed.
pub fn latest_checkpoint(checkpoints_dir: &Path) -> Result<Option<PathBuf>> {
    let pointer = checkpoints_dir.join(LATEST_FILE);
    let text = match fs::read_to_string(&pointer) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&pointer)(e)),
    };
    let name = text.trim();
    if parse_step_dir(name).is_none() {
        return Err(TrainError::Invalid {
            path: pointer,
            what: format!("{name:?} is not a checkpoint name like `step-100`"),
        });
    }
    let dir = checkpoints_dir.join(name);
    if !dir.is_dir() {
        return Err(TrainError::Invalid {
            path: pointer,
            what: format!("points to `{name}`, which does not exist"),
        });
    }
    Ok(Some(dir))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Invalid {
        path: path.to_path_buf(),
        what: e.to_string(),
    })
}

/// Reads `names[i]` with `specs[i]`'s shape, and fails on any tensor not asked for.
fn read_f32_tensors(
    path: &Path,
    specs: &[ParamSpec],
    names: &[String],
) -> Result<Vec<NamedTensor>> {
    let file = Safetensors::open(path)?;
    for info in file.tensors() {
        if !names.contains(&info.name) {
            return Err(TrainError::Invalid {
                path: path.to_path_buf(),
                what: format!(
                    "unexpected tensor `{}`: the checkpoint is for another adapter shape",
                    info.name
                ),
            });
        }
    }
    specs
        .iter()
        .zip(names)
        .map(|(spec, name)| {
            let info = file.tensor(name).ok_or_else(|| TrainError::Invalid {
                path: path.to_path_buf(),
                what: format!("tensor `{name}` is missing"),
            })?;
            if info.shape != spec.shape {
                return Err(TrainError::TensorShape {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    expected: spec.shape.clone(),
                    found: info.shape.clone(),
                });
            }
            if info.dtype != Dtype::F32 {
                return Err(TrainError::Invalid {
                    path: path.to_path_buf(),
                    what: format!("tensor `{name}` is {:?}; checkpoints hold F32", info.dtype),
                });
            }
            Ok(NamedTensor {
                name: name.clone(),
                shape: spec.shape.clone(),
                values: file.tensor_f32(name)?,
            })
        })
        .collect()
}

/// Deletes leftovers of killed saves, checkpoints of steps after `current`, and all but the
/// newest `keep` of the rest.
fn prune(checkpoints_dir: &Path, current: u64, keep: usize) -> Result<()> {
    let mut steps = Vec::new();
    for entry in fs::read_dir(checkpoints_dir).map_err(io_err(checkpoints_dir))? {
        let entry = entry.map_err(io_err(checkpoints_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_leftover(&name) {
            remove_any(&entry.path())?;
        } else if let Some(step) = parse_step_dir(&name) {
            steps.push(step);
        }
    }
    steps.sort_unstable_by(|a, b| b.cmp(a));
    let stale = steps.iter().filter(|&&s| s > current);
    let old = steps.iter().filter(|&&s| s <= current).skip(keep);
    for step in stale.chain(old) {
        let path = checkpoints_dir.join(checkpoint_dir_name(*step));
        fs::remove_dir_all(&path).map_err(io_err(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::FILES_BEFORE_FAULT;

    fn checkpoint(step: u64, fill: f32) -> (Checkpoint, Vec<ParamSpec>) {
        let spec = ParamSpec {
            name: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".into(),
            shape: vec![2, 3],
        };
        let ckpt = Checkpoint {
            step,
            adapter_config: crate::RunConfig::default().adapter_config(),
            params: vec![NamedTensor {
                name: spec.name.clone(),
                shape: spec.shape.clone(),
                values: vec![fill; 6],
            }],
            optimizer: AdamWState {
                step,
                exp_avg: vec![vec![fill * 0.5; 6]],
                exp_avg_sq: vec![vec![fill * 0.25; 6]],
            },
            rng: crate::Rng::new(step, crate::Stream::Dropout).state(),
            data: DataPosition {
                epoch: 0,
                index: step,
            },
            elapsed_s: step as f64,
        };
        (ckpt, vec![spec])
    }

    /// A disk that fills up after each possible number of files: every failure leaves the
    /// previous checkpoint loadable and `latest` pointing at it, and no new or temporary
    /// directory behind.
    #[test]
    fn failed_save_leaves_previous_checkpoint_intact() {
        // adapter_config, adapter weights, optimizer, trainer_state, latest.
        for files_before_fault in 0..5 {
            let tmp = tempfile::tempdir().unwrap();
            let (first, specs) = checkpoint(1, 1.0);
            first.save(tmp.path(), 1).unwrap();

            let (second, _) = checkpoint(2, 2.0);
            FILES_BEFORE_FAULT.with(|c| c.set(Some(files_before_fault)));
            let err = second.save(tmp.path(), 1).unwrap_err();
            FILES_BEFORE_FAULT.with(|c| c.set(None));
            assert!(err.to_string().contains("injected fault"), "{err}");

            let loaded = Checkpoint::load_latest(tmp.path(), &specs)
                .unwrap()
                .unwrap();
            assert_eq!(loaded, first, "after a fault at file {files_before_fault}");
            let mut names: Vec<String> = fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            // A fault on `latest` itself comes after step-2 is complete: it may stay (the
            // next save or prune handles it), but `latest` still names step-1.
            let expected: &[&str] = if files_before_fault == 4 {
                &["latest", "step-1", "step-2"]
            } else {
                &["latest", "step-1"]
            };
            assert_eq!(
                names, expected,
                "after a fault at file {files_before_fault}"
            );

            // The run goes on: the next save succeeds and replaces step-1.
            second.save(tmp.path(), 1).unwrap();
            let loaded = Checkpoint::load_latest(tmp.path(), &specs)
                .unwrap()
                .unwrap();
            assert_eq!(loaded, second);
        }
    }
}
