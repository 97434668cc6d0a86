//! `bora export`: a run's adapter (or a model and adapter) written as peft, merged, gguf,
//! gguf-lora or mistral through `bora_model::export`, each proven by loading it back.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bora_formats::quant::GgmlType;
use bora_model::export::hf::{write_merged, MergedOptions, DEFAULT_SHARD_BYTES};
use bora_model::export::verify::Verification;
use bora_model::export::{gguf, mistral, peft, FloatType};
use bora_model::{LoadOptions, Lora, Model};
use bora_run::{MetricSink, RunDir, ADAPTER_CONFIG_FILE};
use bora_train::{open_run_dir, TrackingSection};
use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// adapter_config.json + adapter_model.safetensors (peft, vLLM).
    Peft,
    /// An HF model directory with the adapter merged in (transformers, vLLM, Bedrock).
    Merged,
    /// The merged model as one GGUF file (llama.cpp, Ollama).
    Gguf,
    /// A llama.cpp LoRA adapter for the base model's GGUF.
    GgufLora,
    /// mistral-finetune's lora.safetensors + params.json (Mistral's inference stack).
    Mistral,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Peft => "peft",
            Format::Merged => "merged",
            Format::Gguf => "gguf",
            Format::GgufLora => "gguf-lora",
            Format::Mistral => "mistral",
        }
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A training run directory: its base model and final adapter.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["model", "adapter"])]
    run: Option<PathBuf>,
    /// A base model (`.gguf`, model directory or Hub id ORG/NAME[@REV]), instead of --run.
    #[arg(long, value_name = "PATH|ORG/NAME", required_unless_present = "run")]
    model: Option<PathBuf>,
    /// A PEFT adapter directory for --model (merged and gguf also export the bare model).
    #[arg(long, value_name = "DIR", requires = "model")]
    adapter: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Format,
    /// Output directory (a .gguf file for gguf and gguf-lora)
    /// [default with --run: RUN_DIR/export/FORMAT].
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Element type: f32, f16 or bf16 (merged, mistral); f32, f16, bf16, q8_0, q4_0 or q4_1
    /// (gguf); f32, f16 or bf16 (gguf-lora). Defaults: merged and mistral bf16, gguf f16,
    /// gguf-lora f32; peft is always f32, as peft saves it.
    #[arg(long, value_name = "TYPE")]
    dtype: Option<String>,
    /// Largest safetensors shard of a merged export, in bytes (default 5 GB).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SHARD_BYTES)]
    shard_size: u64,
    /// Skip loading the export back and comparing its logits with the in-memory model.
    #[arg(long)]
    no_verify: bool,
    /// Replace an existing non-empty output.
    #[arg(long)]
    force: bool,
    /// Log the export to Weights & Biases as a `model` artifact of the run's W&B run (the
    /// one training tracked, beside its adapter artifact), PROJECT or PROJECT/ENTITY.
    #[arg(long, value_name = "PROJECT[/ENTITY]", requires = "run")]
    wandb: Option<String>,
}

/// Where the model, adapter and default output come from.
struct Source {
    model: PathBuf,
    adapter: Option<PathBuf>,
    /// `base_model_name_or_path` for the PEFT config.
    base_name: String,
    default_out: Option<PathBuf>,
    stem: String,
}

fn source(args: &ExportArgs) -> Result<Source> {
    if let Some(run) = &args.run {
        let (dir, config) = open_run_dir(run)?;
        let adapter = dir.adapter_dir();
        if !dir.has_adapter() {
            bail!(
                "{}: the run has no final adapter yet; finish it with `bora train --resume {}`",
                adapter.display(),
                run.display()
            );
        }
        let stem = run
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        return Ok(Source {
            model: crate::download::run_model(&config.model)?,
            base_name: base_name(&adapter).unwrap_or(config.model.path.clone()),
            adapter: Some(adapter),
            default_out: Some(run.join("export")),
            stem,
        });
    }
    let model = args.model.clone().context("--model or --run is required")?;
    let stem = model
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    Ok(Source {
        base_name: args
            .adapter
            .as_deref()
            .and_then(base_name)
            .unwrap_or_else(|| model.display().to_string()),
        model: crate::download::model_path(&model)?,
        adapter: args.adapter.clone(),
        default_out: None,
        stem,
    })
}

/// The base model name the trained adapter records, kept so the exported PEFT config
/// points at the same base (a Hub id where training was given one).
fn base_name(adapter: &Path) -> Option<String> {
    let text = std::fs::read_to_string(adapter.join(ADAPTER_CONFIG_FILE)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("base_model_name_or_path")?
        .as_str()
        .map(str::to_owned)
}

fn float_type(dtype: Option<&str>, default: FloatType, format: Format) -> Result<FloatType> {
    match dtype {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--dtype for {}: {e}", format.name())),
    }
}

fn ggml_type(dtype: Option<&str>, default: GgmlType) -> Result<GgmlType> {
    Ok(match dtype.map(str::to_ascii_lowercase).as_deref() {
        None => default,
        Some("f32") => GgmlType::F32,
        Some("f16") => GgmlType::F16,
        Some("bf16") => GgmlType::BF16,
        Some("q8_0") => GgmlType::Q8_0,
        Some("q4_0") => GgmlType::Q4_0,
        Some("q4_1") => GgmlType::Q4_1,
        Some(other) => bail!("--dtype `{other}` is not f32, f16, bf16, q8_0, q4_0 or q4_1"),
    })
}

pub fn run(args: &ExportArgs) -> Result<()> {
    // Asked for W&B: the key is checked before the export, which may take minutes.
    let tracking = match (&args.run, &args.wandb) {
        (Some(run), Some(target)) => {
            let (_, config) = open_run_dir(run)?;
            let section = TrackingSection {
                wandb: target.clone(),
                wandb_offline: false,
                wandb_registry: String::new(),
            };
            let tracking = crate::train::wandb_tracking(&section, &config)?
                .context("--wandb names no W&B project")?;
            Some((run, target, config, tracking))
        }
        _ => None,
    };
    let src = source(args)?;
    let format = args.format;
    let out = match (&args.out, &src.default_out) {
        (Some(o), _) => o.clone(),
        (None, Some(export)) => match format {
            Format::Gguf => export.join("gguf").join(format!("{}.gguf", src.stem)),
            Format::GgufLora => export
                .join("gguf-lora")
                .join(format!("{}-lora.gguf", src.stem)),
            _ => export.join(format.name()),
        },
        (None, None) => bail!("--out is required with --model"),
    };
    let model = Model::load(&src.model, &LoadOptions::default())
        .with_context(|| format!("loading the base model {}", src.model.display()))?;
    let lora = match &src.adapter {
        Some(dir) => Some(
            Lora::load_peft(dir, &model.config)
                .with_context(|| format!("loading the adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let needs_adapter = || {
        lora.as_ref().with_context(|| {
            format!(
                "--format {} exports an adapter; pass --adapter DIR (or --run)",
                format.name()
            )
        })
    };
    let verify = !args.no_verify;
    let dtype = args.dtype.as_deref();
    if format == Format::Peft && dtype.is_some_and(|d| !d.eq_ignore_ascii_case("f32")) {
        bail!("--format peft is always written in f32, as peft saves adapters");
    }
    let mut notes = Vec::new();
    let verification = match format {
        Format::Peft => peft::write_peft(
            &model,
            needs_adapter()?,
            Some(src.base_name.clone()),
            &out,
            args.force,
            verify,
        )?,
        Format::Mistral => mistral::write_mistral(
            &model,
            needs_adapter()?,
            &out,
            float_type(dtype, FloatType::Bf16, format)?,
            args.force,
            verify,
        )?,
        Format::Merged => {
            let options = MergedOptions {
                dtype: float_type(dtype, FloatType::Bf16, format)?,
                shard_bytes: args.shard_size,
                force: args.force,
                verify,
            };
            let export = write_merged(&model, lora.as_ref(), &out, &options)?;
            notes = export.warnings;
            export.verification
        }
        Format::Gguf | Format::GgufLora => {
            if out.exists() && !args.force {
                bail!(
                    "{} already exists; pass --force to replace it",
                    out.display()
                );
            }
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let export = if format == Format::Gguf {
                let ty = ggml_type(dtype, GgmlType::F16)?;
                gguf::write_gguf(&model, lora.as_ref(), ty, &out, verify)?
            } else {
                let ty = ggml_type(dtype, GgmlType::F32)?;
                gguf::write_gguf_lora(&model, needs_adapter()?, ty, &out, verify)?
            };
            if let Some((same, n)) = export.greedy {
                notes.push(format!(
                    "greedy tokens of the reloaded file match in memory at {same} of {n} positions"
                ));
            }
            export.verification
        }
    };
    println!("{}: {}", format.name(), out.display());
    for note in &notes {
        eprintln!("note: {note}");
    }
    report(verification.as_ref());
    if let Some((run, target, config, mut tracking)) = tracking {
        let request =
            crate::wandb_models::export_request(run, &config, format.name(), out.clone(), target);
        tracking.start(&RunDir::at(run), 0)?;
        let logged = tracking.log_artifact(&request).is_some();
        tracking.close(logged)?;
        if !logged {
            bail!("the export was written but not logged to W&B (see the warning above)");
        }
    }
    Ok(())
}

/// The run's merged export for a deployment: `RUN_DIR/export/merged` as `bora export --format
/// merged` writes it (bf16, verified), written first when it is missing or older than the
/// run's adapter.
pub fn merged_for_run(run_dir: &Path) -> Result<PathBuf> {
    let out = run_dir.join("export").join(Format::Merged.name());
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let adapter = open_run_dir(run_dir)?.0.adapter_dir();
    let fresh = match (
        modified(&out.join("config.json")),
        modified(&adapter.join(bora_run::ADAPTER_WEIGHTS_FILE)),
    ) {
        (Some(export), Some(adapter)) => export >= adapter,
        _ => false,
    };
    if fresh {
        println!("using the merged export {}", out.display());
        return Ok(out);
    }
    run(&ExportArgs {
        run: Some(run_dir.to_path_buf()),
        model: None,
        adapter: None,
        format: Format::Merged,
        out: Some(out.clone()),
        dtype: None,
        shard_size: DEFAULT_SHARD_BYTES,
        no_verify: false,
        force: true,
        wandb: None,
    })?;
    Ok(out)
}

fn report(v: Option<&Verification>) {
    match v {
        None => println!("not verified (--no-verify)"),
        Some(v) => println!(
            "verified: reloaded, max relative logit error {:.2e} (tolerance {:.0e}) over {} prompts; the adapter moves the logits by {:.2e}",
            v.max_error, v.tolerance, v.prompts, v.adapter_effect
        ),
    }
}
