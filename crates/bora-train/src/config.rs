//! The run config: one TOML file, nested sections like mistral-finetune's argument
//! dataclasses, validated as a whole before any work starts. Every key has a dotted name
//! (`lora.rank`, `optim.lr`) that a CLI flag can set through [`RunConfig::apply_override`].
//!
//! ```toml
//! name = "support-bot"
//! [model]
//! path = "SmolLM2-135M-Instruct.Q4_1.gguf"
//! [data]
//! train = "data/train.jsonl"
//! [lora]
//! rank = 16
//! [train]
//! max_steps = 200
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use bora_formats::quant::{GgmlType, WeightType};
use bora_model::LoraTarget;

use crate::adapter::AdapterConfig;
use crate::error::{io_err, Result, TrainError};
use crate::optim::AdamWConfig;
use crate::schedule::{LrSchedule, ScheduleKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Run name: the directory under `runs/`. Default `"run"`.
    pub name: String,
    pub model: ModelSection,
    pub data: DataSection,
    pub lora: LoraSection,
    pub optim: OptimSection,
    pub train: TrainSection,
    pub qlora: QloraSection,
    pub tracking: TrackingSection,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Required. A `.gguf` file, an HF model directory, a Mistral consolidated directory or
    /// a Hub id (`ORG/NAME`, or `ORG/NAME:FILE.gguf`).
    pub path: String,
    /// For a Hub id: the commit it resolved to when the run started, so that resume, eval
    /// and export load the same snapshot from the cache, with no network. Empty otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revision: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Required. The training JSONL file.
    pub train: PathBuf,
    /// Held-out JSONL for validation loss. Default: none (empty).
    pub eval: PathBuf,
    /// Without an eval file, the share of training examples held out for validation (a
    /// seeded draw). Default 0: no validation.
    pub val_fraction: f64,
    /// Leave out lines that fail validation (each is reported) instead of refusing the
    /// file. Default false.
    pub skip_bad_lines: bool,
    /// Drop examples longer than `train.seq_len` instead of truncating them. Default false.
    pub drop_overlong: bool,
}

impl DataSection {
    /// The validation file, if one is set.
    pub fn eval_path(&self) -> Option<&Path> {
        (!self.eval.as_os_str().is_empty()).then_some(self.eval.as_path())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    /// Rank r of A [r, in] and B [out, r]. Default 16.
    pub rank: usize,
    /// Scale numerator: the update is (alpha/r)·B·A. Default 32.
    pub alpha: f64,
    /// Dropout on the LoRA input, training only. Default 0.05.
    pub dropout: f64,
    /// Projections to adapt, any of q, k, v, o, gate, up, down. Default all seven.
    pub targets: Vec<LoraTarget>,
    /// rsLoRA: scale alpha/√r, which keeps high ranks learning. Default false.
    pub rslora: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate (AdamW). Default 1e-4.
    pub lr: f64,
    /// Decoupled weight decay. Default 0.01 (torch's AdamW default).
    pub weight_decay: f64,
    /// AdamW moment decay rates. Default [0.9, 0.999].
    pub betas: [f64; 2],
    /// AdamW denominator epsilon. Default 1e-8.
    pub eps: f64,
    /// LR schedule after warmup: "constant", "linear" or "cosine". Default "cosine".
    pub schedule: ScheduleKind,
    /// Optimizer steps of linear warmup from 0. Default 0.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this; 0 disables clipping. Default 1.0.
    pub max_grad_norm: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Passes over the training data (used when max_steps is 0). Default 1.
    pub epochs: u64,
    /// Stop after this many optimizer steps; 0 means run `epochs`. Default 0.
    pub max_steps: u64,
    /// Sequences per micro-batch. Default 4.
    pub batch_size: usize,
    /// Micro-batches per optimizer step. Default 1.
    pub grad_accum: u32,
    /// Tokens per sequence. Default 512.
    pub seq_len: usize,
    /// Pack several short examples into one sequence. Default true.
    pub packing: bool,
    /// Drives data order, LoRA init and dropout. Default 0.
    pub seed: u64,
    /// Save a checkpoint every this many optimizer steps (and at the end); 0: only at the
    /// end. Default 100.
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk, newest first. Default 2.
    pub keep_checkpoints: usize,
    /// Compute validation loss every this many steps; 0: only at the end. Default 100.
    pub eval_every: u64,
    /// Recompute activations in backward instead of storing them (less memory, about a
    /// third more compute). Default false.
    pub recompute: bool,
    /// Early stopping: stop after this many validations in a row without a lower validation
    /// loss, and keep the adapter of the lowest as the final one; 0: off. Default 0
    /// (`bora train --auto`: 3).
    pub patience: u64,
    /// Before the run, pick `optim.lr` with a short learning-rate range test on the training
    /// data (when `optim.lr` is not given). Default false (`bora train --auto`: true).
    pub lr_range_test: bool,
}

/// QLoRA: keep the frozen base quantized in memory; backward only multiplies by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QloraSection {
    /// Quantize an unquantized base on load. Default false (a GGUF base stays as stored).
    pub enabled: bool,
    /// The type to quantize to: nf4 (bitsandbytes' QLoRA format, what the GPU trainer uses),
    /// q4_0, q4_1 or q8_0. Default "q4_0".
    pub quant: String,
}

impl QloraSection {
    /// The block type the frozen base is quantized to on load (`None`: loaded as stored).
    /// Public because everything that reloads a run's base (eval, serve, export) must load
    /// the same base the adapter was trained on.
    pub fn quantize(&self) -> Result<Option<WeightType>> {
        if !self.enabled {
            return Ok(None);
        }
        match self.quant.as_str() {
            "nf4" => Ok(Some(WeightType::Nf4)),
            "q4_0" => Ok(Some(WeightType::Ggml(GgmlType::Q4_0))),
            "q4_1" => Ok(Some(WeightType::Ggml(GgmlType::Q4_1))),
            "q8_0" => Ok(Some(WeightType::Ggml(GgmlType::Q8_0))),
            other => Err(TrainError::Config {
                key: "qlora.quant".into(),
                reason: format!("{other:?} is not one of {}", QLORA_QUANTS.join(", ")),
            }),
        }
    }
}

/// Tracking beyond `metrics.jsonl` and TensorBoard, which every run writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackingSection {
    /// Weights & Biases `PROJECT` or `PROJECT/ENTITY`; empty: no W&B. Default empty.
    pub wandb: String,
    /// Send nothing to W&B; the run's TensorBoard files go up later with the `wandb sync`
    /// command `bora train` prints. Default false.
    pub wandb_offline: bool,
    /// The W&B registry collection the final adapter is linked to, once logged as a model
    /// artifact: `COLLECTION` (in the `model` registry) or `REGISTRY/COLLECTION`. Default
    /// empty: not linked.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub wandb_registry: String,
}

impl TrackingSection {
    /// The W&B project and entity (`None`: the API key's default entity); `None` when W&B
    /// is off. Names end up in URL paths, so characters W&B refuses are refused here.
    pub fn wandb_target(&self) -> Result<Option<(String, Option<String>)>> {
        if self.wandb.is_empty() {
            if self.wandb_offline {
                return Err(bad(
                    "tracking.wandb_offline",
                    "needs tracking.wandb, the project the sync command uploads to",
                ));
            }
            return Ok(None);
        }
        let (project, entity) = match self.wandb.split_once('/') {
            Some((p, e)) => (p, Some(e)),
            None => (self.wandb.as_str(), None),
        };
        for part in std::iter::once(project).chain(entity) {
            let usable = !part.is_empty()
                && part
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && !"/\\#?%:".contains(c));
            if !usable {
                return Err(bad(
                    "tracking.wandb",
                    format!(
                        "{:?} is not PROJECT or PROJECT/ENTITY (names without spaces or any \
                         of / \\ # ? % :)",
                        self.wandb
                    ),
                ));
            }
        }
        Ok(Some((project.to_owned(), entity.map(str::to_owned))))
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            model: ModelSection::default(),
            data: DataSection::default(),
            lora: LoraSection::default(),
            optim: OptimSection::default(),
            train: TrainSection::default(),
            qlora: QloraSection::default(),
            tracking: TrackingSection::default(),
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: LoraTarget::ALL.to_vec(),
            rslora: false,
        }
    }
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            weight_decay: 0.01,
            betas: [0.9, 0.999],
            eps: 1e-8,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 0,
            max_grad_norm: 1.0,
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: 0,
            batch_size: 4,
            grad_accum: 1,
            seq_len: 512,
            packing: true,
            seed: 0,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            eval_every: 100,
            recompute: false,
            patience: 0,
            lr_range_test: false,
        }
    }
}

impl Default for QloraSection {
    fn default() -> Self {
        Self {
            enabled: false,
            quant: "q4_0".into(),
        }
    }
}

const QLORA_QUANTS: [&str; 4] = ["nf4", "q4_0", "q4_1", "q8_0"];

fn bad(key: &str, reason: impl Into<String>) -> TrainError {
    TrainError::Config {
        key: key.into(),
        reason: reason.into(),
    }
}

impl RunConfig {
    /// Reads and validates a run config file; keys left out take their defaults.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let config = Self::load_unchecked(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a run config file that command-line flags will complete (it may lack
    /// `model.path` or `data.train`); call [`RunConfig::validate`] once they are applied.
    pub fn load_unchecked(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        toml::from_str(&text).map_err(|e| TrainError::ConfigSyntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The dotted names of the keys a config file sets (`optim.lr`), so that defaults chosen
    /// for the run leave them as written.
    pub fn keys_in_file(path: impl AsRef<Path>) -> Result<Vec<String>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| TrainError::ConfigSyntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut keys = Vec::new();
        for (name, value) in &table {
            match value.as_table() {
                Some(section) => keys.extend(section.keys().map(|k| format!("{name}.{k}"))),
                None => keys.push(name.clone()),
            }
        }
        Ok(keys)
    }

    /// Parses and validates config text (errors carry `<config>` as the path).
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| TrainError::ConfigSyntax {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// True when `other` describes the same run: every setting that shapes the training
    /// agrees; only where it is tracked (`[tracking]`) may differ.
    pub fn same_run(&self, other: &RunConfig) -> bool {
        let untracked = |c: &RunConfig| RunConfig {
            tracking: TrackingSection::default(),
            ..c.clone()
        };
        untracked(self) == untracked(other)
    }

    /// The resolved config, every key written out, as saved in the run directory.
    pub fn to_toml(&self) -> Result<String> {
        let body =
            toml::to_string_pretty(self).map_err(|e| bad("(whole config)", e.to_string()))?;
        Ok(format!(
            "# bora run config, resolved: every key with the value the run used.\n{body}"
        ))
    }

    /// Sets one key by its dotted name from a command-line string, as `--lora.rank 32` would.
    /// The value is read as a TOML value (`32`, `true`, `[0.9, 0.95]`, `"cosine"`), or as a
    /// bare string when it is not one (`--model.path m.gguf`). The whole config is
    /// revalidated.
    pub fn apply_override(&mut self, key: &str, value: &str) -> Result<()> {
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        let mut root = toml::Value::try_from(&*self)
            .map_err(|e| bad(key, format!("cannot represent config: {e}")))?;
        let mut slot = &mut root;
        let parts: Vec<&str> = key.split('.').collect();
        let (leaf, sections) = parts.split_last().ok_or_else(|| bad(key, "empty key"))?;
        for section in sections {
            slot = slot
                .get_mut(*section)
                .filter(|v| v.is_table())
                .ok_or_else(|| bad(key, format!("there is no section `{section}`")))?;
        }
        let table = slot
            .as_table_mut()
            .ok_or_else(|| bad(key, "not inside a section"))?;
        if let (Some(old), toml::Value::String(s)) = (table.get(*leaf), &parsed) {
            // A string given for a non-string key: report it as a type error, not as
            // whatever the schema says about strings.
            if !old.is_str() {
                return Err(bad(
                    key,
                    format!("expected type {}, got {s:?}", old.type_str()),
                ));
            }
        }
        table.insert((*leaf).to_owned(), parsed);
        let updated: Self = root
            .try_into()
            .map_err(|e: toml::de::Error| bad(key, e.message().trim_end().to_owned()))?;
        updated.validate()?;
        *self = updated;
        Ok(())
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && !self.name.starts_with('.')
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(bad(
                "name",
                format!(
                    "{:?} is not a usable directory name (letters, digits, `-`, `_`, `.`)",
                    self.name
                ),
            ));
        }
        if self.model.path.is_empty() {
            return Err(bad(
                "model.path",
                "is required: the base model to fine-tune",
            ));
        }
        if self.data.train.as_os_str().is_empty() {
            return Err(bad("data.train", "is required: the training JSONL file"));
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return Err(bad(
                "data.val_fraction",
                format!("must be in [0, 1), got {}", self.data.val_fraction),
            ));
        }

        let lora = &self.lora;
        if lora.rank == 0 {
            return Err(bad("lora.rank", "must be at least 1"));
        }
        if !(lora.alpha.is_finite() && lora.alpha > 0.0) {
            return Err(bad(
                "lora.alpha",
                format!("must be > 0, got {}", lora.alpha),
            ));
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            return Err(bad(
                "lora.dropout",
                format!("must be in [0, 1), got {}", lora.dropout),
            ));
        }
        if lora.targets.is_empty() {
            return Err(bad("lora.targets", "must name at least one projection"));
        }
        for (i, t) in lora.targets.iter().enumerate() {
            if lora.targets[..i].contains(t) {
                return Err(bad("lora.targets", format!("`{t}` is listed twice")));
            }
        }

        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(bad("optim.lr", format!("must be > 0, got {}", o.lr)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(bad(
                "optim.weight_decay",
                format!("must be >= 0, got {}", o.weight_decay),
            ));
        }
        for (i, b) in o.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return Err(bad(
                    "optim.betas",
                    format!("beta{} must be in [0, 1), got {b}", i + 1),
                ));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(bad("optim.eps", format!("must be > 0, got {}", o.eps)));
        }
        if !(o.max_grad_norm.is_finite() && o.max_grad_norm >= 0.0) {
            return Err(bad(
                "optim.max_grad_norm",
                format!("must be >= 0 (0 disables), got {}", o.max_grad_norm),
            ));
        }

        let t = &self.train;
        if t.epochs == 0 && t.max_steps == 0 {
            return Err(bad(
                "train.epochs",
                "must be at least 1 when train.max_steps is 0",
            ));
        }
        for (key, v) in [
            ("train.batch_size", t.batch_size),
            ("train.grad_accum", t.grad_accum as usize),
            ("train.keep_checkpoints", t.keep_checkpoints),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        if t.seq_len < 2 {
            return Err(bad(
                "train.seq_len",
                format!(
                    "must be at least 2 (a token and its successor), got {}",
                    t.seq_len
                ),
            ));
        }
        if t.max_steps > 0 && o.warmup_steps > t.max_steps {
            return Err(bad(
                "optim.warmup_steps",
                format!(
                    "{} is more than train.max_steps ({})",
                    o.warmup_steps, t.max_steps
                ),
            ));
        }
        if !QLORA_QUANTS.contains(&self.qlora.quant.as_str()) {
            return Err(bad(
                "qlora.quant",
                format!(
                    "{:?} is not one of {}",
                    self.qlora.quant,
                    QLORA_QUANTS.join(", ")
                ),
            ));
        }
        self.tracking.wandb_target()?;
        Ok(())
    }

    /// The `adapter_config.json` settings this run's adapter is saved with.
    pub fn adapter_config(&self) -> AdapterConfig {
        AdapterConfig {
            base_model_name_or_path: Some(self.model.path.clone()),
            rank: self.lora.rank,
            alpha: self.lora.alpha,
            dropout: self.lora.dropout,
            targets: self.lora.targets.clone(),
            rslora: self.lora.rslora,
        }
    }

    /// Optimizer steps of the whole run, given how many micro-batches one epoch yields: a
    /// partial accumulation window at the end of an epoch still makes a step.
    pub fn total_steps(&self, micro_batches_per_epoch: u64) -> u64 {
        if self.train.max_steps > 0 {
            return self.train.max_steps;
        }
        let per_epoch = micro_batches_per_epoch.div_ceil(u64::from(self.train.grad_accum));
        self.train.epochs.saturating_mul(per_epoch)
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            betas: (self.optim.betas[0], self.optim.betas[1]),
            eps: self.optim.eps,
            weight_decay: self.optim.weight_decay,
        }
    }

    /// The LR schedule for a run of `total_steps` optimizer steps (known once the data is
    /// counted).
    pub fn lr_schedule(&self, total_steps: u64) -> LrSchedule {
        LrSchedule {
            kind: self.optim.schedule,
            base_lr: self.optim.lr,
            warmup_steps: self.optim.warmup_steps,
            total_steps,
        }
    }
}
