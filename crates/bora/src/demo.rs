//! `bora demo`: the whole pipeline on the bundled task (order sentences to JSON): write the
//! data, check it, train a LoRA, evaluate base against tuned, write the report.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bora_data::read_jsonl;
use bora_eval::Metric;
use bora_run::RunFiles;
use bora_train::{
    run, DataSection, Event, LoraSection, ModelSection, OptimSection, RunConfig, Start,
    TrainSection, Unset,
};
use clap::Args;

#[derive(Args)]
pub struct DemoArgs {
    /// Run directory to create.
    #[arg(long, value_name = "DIR", default_value = "runs/demo")]
    out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 60)]
    steps: u64,
    /// Base model: a path or a Hub id ORG/NAME[@REV] [default: the default model].
    #[arg(long, value_name = "PATH|ORG/NAME")]
    model: Option<PathBuf>,
}

/// The splits and their sizes, drawn disjoint from one seeded stream.
const SPLITS: [&str; 3] = ["train", "val", "test"];
const SIZES: [usize; 3] = [1200, 40, 200];
const SEED: u64 = 1;

pub fn demo(args: &DemoArgs) -> Result<()> {
    let model = match &args.model {
        Some(m) => crate::download::model_path(m)?,
        None => bora_formats::cache::default_model(),
    };
    let data_dir = args.out.with_file_name(format!(
        "{}-data",
        args.out
            .file_name()
            .context("--out needs a directory name")?
            .to_string_lossy()
    ));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    for (split, text) in SPLITS.iter().zip(bora_eval::demo_splits(SEED, SIZES)) {
        let path = data_dir.join(format!("{split}.jsonl"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("data check: {} {} examples", path.display(), check(&path)?);
    }
    let file = |split: &str| std::path::absolute(data_dir.join(format!("{split}.jsonl")));
    let defaults = RunConfig::default();
    // Short sequences (about 75 tokens) and a small rank: the task is a format to learn, not
    // knowledge, so a high learning rate converges in a few dozen steps on two cores.
    let config = RunConfig {
        name: args
            .out
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        model: ModelSection {
            path: std::path::absolute(&model)?.display().to_string(),
            revision: String::new(),
        },
        data: DataSection {
            train: file("train")?,
            eval: file("val")?,
            ..defaults.data
        },
        lora: LoraSection {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            ..defaults.lora
        },
        optim: OptimSection {
            lr: 3e-3,
            warmup_steps: 10,
            ..defaults.optim
        },
        train: TrainSection {
            max_steps: args.steps,
            batch_size: 8,
            seq_len: 96,
            packing: false,
            eval_every: 10,
            checkpoint_every: 30,
            keep_checkpoints: 1,
            ..defaults.train
        },
        qlora: defaults.qlora,
        tracking: defaults.tracking,
    };
    let runs_root = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let summary = run(
        Start::New {
            runs_root,
            config: Box::new(config),
            model_dir: None,
            unset: Unset::default(),
        },
        vec![Box::new(RunFiles::default())],
        &mut |event| {
            match event {
            Event::Begin { train_examples, val_examples, total_steps, .. } => println!(
                "training on {train_examples} examples ({val_examples} validation), {total_steps} steps"
            ),
            Event::Step(m) if m.step % 10 == 0 || m.val_loss.is_some() => println!(
                "step {} loss {:.4}{}",
                m.step,
                m.loss,
                m.val_loss.map(|v| format!(" val {v:.4}")).unwrap_or_default()
            ),
            _ => {}
        }
        },
    )?;
    println!(
        "trained {} steps in {:.1}s ({:.2} s/step)",
        summary.steps, summary.timing.train_seconds, summary.timing.seconds_per_step
    );
    let test = data_dir.join("test.jsonl");
    let examples = crate::eval::Examples {
        data: &test,
        metric: Metric::Json,
        limit: None,
        max_tokens: 64,
    };
    let (results, _, report) = crate::eval::eval_run(
        &summary.run_dir,
        &crate::generate::QuantArg::default(),
        examples,
        &bora_eval::Decoding::default(),
        None,
        None,
        None,
    )?;
    let tuned = results.tuned.as_ref().map(|t| t.score).unwrap_or(f64::NAN);
    println!(
        "json score on {} held-out examples: base {:.1}%, tuned {:.1}%",
        results.n,
        100.0 * results.base.score,
        100.0 * tuned
    );
    println!("{}", report.display());
    Ok(())
}

/// The data check stage: every line of every split must parse (the generator guarantees it;
/// this is the same check `bora data check` runs, so the demo shows the whole path).
fn check(path: &Path) -> Result<usize> {
    let outcome = read_jsonl(path)?;
    if let Some(e) = outcome.errors.first() {
        bail!("{}:{}: {}: {}", path.display(), e.line, e.field, e.what);
    }
    Ok(outcome.records.len())
}
