//! Amazon Bedrock, through `bora_aws`: `bora deploy bedrock` (a run's merged export checked
//! against Custom Model Import's requirements, uploaded to S3 and imported), and the imported
//! model as the model of `bora chat --bedrock` and a side of `bora eval --bedrock`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bora_aws::{
    check_import_dir, Aws, FileOutcome, ImportRequest, ImportStatus, InvokeParams, S3Location,
    UploadEvent, UploadOptions, MIN_PART_SIZE,
};
use bora_eval::{load_items, DeployedAnswer, Metric};
use bora_tokenizer::{SpecialTokenPolicy, Tokenizer};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct DeployArgs {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    /// Import the merged model into Amazon Bedrock (Custom Model Import) and print its ARN.
    Bedrock(BedrockArgs),
}

#[derive(Args)]
pub struct BedrockArgs {
    /// A training run: its merged export (`RUN_DIR/export/merged`, written first when missing
    /// or older than the run's adapter).
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "dir")]
    run: Option<PathBuf>,
    /// An existing merged model directory to import instead of a run's.
    #[arg(long, value_name = "DIR", conflicts_with = "run")]
    dir: Option<PathBuf>,
    /// Where the model files go: s3://BUCKET/PREFIX (the bucket in the import's region).
    #[arg(long, value_name = "S3_URI")]
    bucket: String,
    /// The service role Bedrock assumes to read the bucket.
    #[arg(long, value_name = "ARN")]
    role_arn: String,
    /// AWS region [default: the region the AWS CLI would use: AWS_REGION, the profile].
    #[arg(long)]
    region: Option<String>,
    /// The imported model's name in Bedrock [default: the run directory's name].
    #[arg(long, value_name = "NAME")]
    model_name: Option<String>,
    /// Size of the parts large files are uploaded in, in MiB (at least 5).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    part_size_mib: u64,
    /// Seconds between two looks at the import job.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    poll_seconds: f64,
    /// Give up waiting for the import after this many minutes (the job goes on; running the
    /// command again finds it and waits again).
    #[arg(long, value_name = "MINUTES", default_value_t = 120)]
    wait_minutes: u64,
}

pub fn deploy(args: &DeployArgs) -> Result<()> {
    match &args.target {
        Target::Bedrock(a) => bedrock(a),
    }
}

/// A name Bedrock accepts for a model or job: letters, digits and single hyphens, at most
/// `max` characters.
fn bedrock_name(raw: &str, max: usize) -> String {
    let name = raw
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    name.chars()
        .take(max)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

fn bedrock(args: &BedrockArgs) -> Result<()> {
    let dest: S3Location = args.bucket.parse()?;
    if !(args.poll_seconds.is_finite() && args.poll_seconds >= 0.0) {
        bail!("--poll-seconds must be a number of seconds, 0 or more");
    }
    let part_size = args.part_size_mib.saturating_mul(1024 * 1024);
    if part_size < MIN_PART_SIZE {
        bail!("--part-size-mib must be at least 5 (S3's smallest part)");
    }
    let (dir, default_name) = match (&args.run, &args.dir) {
        (Some(run), _) => (
            crate::export::merged_for_run(run)?,
            run.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        (None, Some(dir)) => (
            dir.clone(),
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        (None, None) => bail!("--run or --dir is required"),
    };
    let model_name = bedrock_name(args.model_name.as_deref().unwrap_or(&default_name), 63);
    if model_name.is_empty() {
        bail!("--model-name: give the imported model a name of letters, digits and hyphens");
    }
    let check = check_import_dir(&dir)?;
    println!(
        "checked {}: {}, {} files, {} (weights {})",
        dir.display(),
        check.architecture,
        check.files.len(),
        size(check.total_bytes),
        size(check.weight_bytes)
    );
    for warning in &check.warnings {
        eprintln!("warning: {warning}");
    }
    let aws = Aws::connect(args.region.as_deref())?;
    println!("uploading to {dest} (region {})", aws.region());
    let options = UploadOptions { part_size };
    aws.upload_dir(&dir, &check.files, &dest, &options, &mut |event| {
        if let UploadEvent::File {
            name,
            size: bytes,
            outcome,
        } = event
        {
            let what = match outcome {
                FileOutcome::Skipped => "already in S3 with the same bytes, skipped".to_owned(),
                FileOutcome::Uploaded => "uploaded".to_owned(),
                FileOutcome::Multipart { parts, kept: 0 } => format!("uploaded in {parts} parts"),
                FileOutcome::Multipart { parts, kept } => {
                    format!("uploaded in {parts} parts, {kept} kept from an earlier run")
                }
            };
            println!("  {name} ({}): {what}", size(bytes));
        }
    })?;
    let job = match aws.running_import(&model_name)? {
        Some(job) => {
            println!("import job {job} for {model_name} is already running; waiting for it");
            job
        }
        None => {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let job_name = format!("{}-{secs}", bedrock_name(&model_name, 52));
            let job = aws.create_import_job(&ImportRequest {
                job_name: &job_name,
                model_name: &model_name,
                role_arn: &args.role_arn,
                source: &dest,
            })?;
            println!("import job {job} started");
            job
        }
    };
    let mut last: Option<ImportStatus> = None;
    let mut last_print = Duration::ZERO;
    let model_arn = aws.wait_import_job(
        &job,
        Duration::from_secs_f64(args.poll_seconds),
        Duration::from_secs(args.wait_minutes.saturating_mul(60)),
        &mut |state, waited| {
            let changed = last != Some(state.status);
            if changed || waited >= last_print + Duration::from_secs(300) {
                println!("  {} after {}s", state.status.name(), waited.as_secs());
                last = Some(state.status);
                last_print = waited;
            }
        },
    )?;
    println!("imported model: {model_arn}");
    println!(
        "try it: bora chat --bedrock {model_arn} --model {}",
        dir.display()
    );
    Ok(())
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{bytes} B")
    }
}

/// `--bedrock ARN [--region R]`: a model imported into Bedrock, called instead of (or beside)
/// a local one.
#[derive(Args, Debug, Clone, Default)]
pub struct BedrockModelArg {
    /// An imported model's ARN (from `bora deploy bedrock`), called with InvokeModel; the
    /// prompt is written in the chat format of --model (or the run's model), as training
    /// wrote it.
    #[arg(long, value_name = "MODEL_ARN")]
    pub bedrock: Option<String>,
    /// The AWS region of --bedrock [default: the one in the ARN].
    #[arg(long, value_name = "REGION", requires = "bedrock")]
    pub region: Option<String>,
}

impl BedrockModelArg {
    /// The AWS configuration for the model's region: --region, else the ARN's
    /// (`arn:aws:bedrock:REGION:ACCOUNT:imported-model/ID`), else the AWS CLI's.
    pub fn connect(&self) -> Result<Aws> {
        let from_arn = self
            .bedrock
            .as_deref()
            .and_then(|arn| arn.split(':').nth(3))
            .filter(|r| !r.is_empty());
        Ok(Aws::connect(self.region.as_deref().or(from_arn))?)
    }
}

/// The prompt text of a formatted conversation. The leading BOS token is left out: the
/// imported model's tokenizer adds its own, as transformers does by default.
pub fn prompt_text(tok: &Tokenizer, ids: &[u32]) -> String {
    let ids = match (ids.first(), tok.bos_id()) {
        (Some(&first), Some(bos)) if first == bos => &ids[1..],
        _ => ids,
    };
    tok.decode_with(ids, SpecialTokenPolicy::Keep)
}

/// The deployed model's answer to every test example, prompted exactly as the local
/// evaluation prompts (the same examples, formatted by `model`'s chat format). Asked before
/// the local passes, so a missing permission or quota stops the evaluation at once.
pub fn answers(
    target: &BedrockModelArg,
    arn: &str,
    model: &Path,
    data: &Path,
    metric: &Metric,
    limit: Option<usize>,
    params: &InvokeParams,
) -> Result<Vec<DeployedAnswer>> {
    let tok = Tokenizer::from_file(model)
        .with_context(|| format!("loading the tokenizer of {}", model.display()))?;
    let items = load_items(data, &tok, metric, limit)?;
    let aws = target.connect()?;
    let mut answers = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = aws.invoke(arn, &prompt_text(&tok, &item.prompt_ids), params)?;
        answers.push(DeployedAnswer {
            line: item.line,
            text,
        });
        if (i + 1) % 25 == 0 || i + 1 == items.len() {
            eprintln!("deployed {}/{}", i + 1, items.len());
        }
    }
    Ok(answers)
}
