//! W&B Models for the commands that make models: the adapter `bora train` ends with, and the
//! exports of `bora export`, as `model` artifacts of the run's W&B run, with what a reader
//! of the version wants to know about it in its metadata.

use std::path::{Path, PathBuf};

use anyhow::Result;
use bora_eval::{eval_scalars, EvalResults, RESULTS_FILE};
use bora_hub::wandb::{sha256_file, ArtifactRequest, RegistryTarget};
use bora_run::{Metrics, RunDir};
use bora_train::{RunConfig, TrackingSection};
use serde_json::{json, Map, Value};

/// The artifact collection of a run's `what` (`adapter`, `gguf`, ...): `RUN-WHAT`, with any
/// character W&B refuses in a name replaced by `-`.
pub(crate) fn artifact_name(run_name: &str, what: &str) -> String {
    format!("{run_name}-{what}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The registry collection `tracking.wandb_registry` names, checked before any work.
pub(crate) fn registry(tracking: &TrackingSection) -> Result<Option<RegistryTarget>> {
    if tracking.wandb_registry.is_empty() {
        return Ok(None);
    }
    if tracking.wandb.is_empty() {
        anyhow::bail!(
            "tracking.wandb_registry {:?} needs tracking.wandb (--wandb PROJECT[/ENTITY]): \
             the adapter is linked once it is logged to a W&B project",
            tracking.wandb_registry
        );
    }
    Ok(Some(RegistryTarget::parse(&tracking.wandb_registry)?))
}

/// The command that logs a run's `what` to W&B again.
fn retry_command(
    run: &Path,
    target: &str,
    what: &str,
    registry: Option<&RegistryTarget>,
) -> String {
    let mut command = format!(
        "bora push --run {} --wandb-artifact {target}",
        run.display()
    );
    if what != "adapter" {
        command.push_str(&format!(" --what {what}"));
    }
    if let Some(r) = registry {
        command.push_str(&format!(
            " --wandb-registry {}/{}",
            r.registry, r.collection
        ));
    }
    command
}

/// What the adapter's version says about itself: base model, LoRA (and QLoRA) settings, the
/// SHA-256 of the training data, the run's final loss and its eval scores where known.
fn adapter_metadata(run: &Path, config: &RunConfig) -> Map<String, Value> {
    let mut metadata = Map::new();
    metadata.insert("bora_run".into(), json!(config.name));
    metadata.insert("base_model".into(), json!(config.model.path));
    if !config.model.revision.is_empty() {
        metadata.insert("base_model_revision".into(), json!(config.model.revision));
    }
    metadata.insert("lora".into(), json!(config.lora));
    if config.qlora.enabled {
        metadata.insert("qlora".into(), json!(config.qlora));
    }
    // The data may have moved since training; the hash is then left out, never guessed.
    if let Ok(sha256) = sha256_file(&config.data.train) {
        metadata.insert("data_sha256".into(), json!(sha256));
    }
    if let Some(loss) = final_loss(run) {
        metadata.insert("final_loss".into(), json!(loss));
    }
    if let Some(scores) = eval_scores(run) {
        metadata.insert("eval".into(), Value::Object(scores));
    }
    metadata
}

/// The training loss of the run's last step, from `metrics.jsonl`.
fn final_loss(run: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(RunDir::at(run).metrics_path()).ok()?;
    let last = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Metrics>(l).ok())?;
    last.loss.to_string().parse().ok()
}

/// `eval/base/score` and the like, from the run's last `bora eval`.
fn eval_scores(run: &Path) -> Option<Map<String, Value>> {
    let path = RunDir::at(run).eval_dir().join(RESULTS_FILE);
    let results: EvalResults = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(
        eval_scalars(&results)
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect(),
    )
}

/// The run's final adapter as a `model` artifact; `target` is the `PROJECT[/ENTITY]` the
/// retry command names.
pub(crate) fn adapter_request(
    run: &Path,
    config: &RunConfig,
    target: &str,
    registry: Option<RegistryTarget>,
) -> ArtifactRequest {
    ArtifactRequest {
        role: "adapter".into(),
        name: artifact_name(&config.name, "adapter"),
        source: RunDir::at(run).adapter_dir(),
        description: format!(
            "LoRA adapter of bora run {} on {}",
            config.name, config.model.path
        ),
        metadata: adapter_metadata(run, config),
        retry_command: retry_command(run, target, "adapter", registry.as_ref()),
        registry,
    }
}

/// An export of the run (`merged`, `gguf`, ...) at `source` as a further `model` artifact of
/// the same run, next to the adapter it was made from.
pub(crate) fn export_request(
    run: &Path,
    config: &RunConfig,
    format: &str,
    source: PathBuf,
    target: &str,
) -> ArtifactRequest {
    let mut metadata = adapter_metadata(run, config);
    metadata.insert("format".into(), json!(format));
    ArtifactRequest {
        role: format!("export-{format}"),
        name: artifact_name(&config.name, format),
        source,
        description: format!(
            "{format} export of bora run {} on {}",
            config.name, config.model.path
        ),
        metadata,
        retry_command: retry_command(run, target, format, None),
        registry: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_keep_what_wandb_accepts() {
        assert_eq!(artifact_name("demo run/1", "gguf"), "demo-run-1-gguf");
        assert_eq!(artifact_name("ok_name.v2", "adapter"), "ok_name.v2-adapter");
    }

    #[test]
    fn retry_commands_name_the_part_and_the_registry() {
        let registry = RegistryTarget::parse("tuned").unwrap();
        assert_eq!(
            retry_command(Path::new("runs/a"), "proj/team", "adapter", Some(&registry)),
            "bora push --run runs/a --wandb-artifact proj/team --wandb-registry model/tuned"
        );
        assert_eq!(
            retry_command(Path::new("runs/a"), "proj", "gguf", None),
            "bora push --run runs/a --wandb-artifact proj --what gguf"
        );
    }
}
