//! `bora generate`, `bora chat`, `bora perplexity`, `bora info`: run a model through
//! `bora_model` with the tokenizer and chat format from `bora_tokenizer`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bora_formats::quant::{GgmlType, WeightType};
use bora_model::{
    CheckpointInfo, GenerateOptions, Generation, Generator, JsonConstraint, JsonSchema,
    LoadOptions, Model, SamplingParams, VocabIndex, Workspace,
};
use bora_tokenizer::chat::{ChatFormat, Content, Conversation, Message, Role};
use bora_tokenizer::Tokenizer;
use clap::Args;

use crate::speak::Speech;

/// Where the model comes from and how long a sequence it may run.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A `.gguf` file, a Hugging Face model directory, a Mistral consolidated directory, or
    /// a Hub id ORG/NAME[@REV] or ORG/NAME:FILE.gguf (fetched into the Hugging Face cache)
    /// [default: the default model, see `bora default-model`].
    #[arg(long, value_name = "PATH|ORG/NAME")]
    model: Option<PathBuf>,
    /// Longest sequence (prompt + reply) to run [default: the model's, at most 8192].
    #[arg(long, value_name = "N")]
    context: Option<usize>,
    #[command(flatten)]
    quant: QuantArg,
}

/// How an f32/f16/bf16 checkpoint's projections are held in memory.
#[derive(Args, Debug, Clone, Default)]
pub struct QuantArg {
    /// In-memory type of an f32/f16/bf16 checkpoint's projections: q8_0, q4_0, q4_1 or bf16
    /// (f16/bf16 as stored, f32 halved) [default: q8_0 from 1B parameters, else as stored;
    /// a GGUF keeps its own].
    #[arg(long, value_name = "TYPE", value_parser = ["q8_0", "q4_0", "q4_1", "bf16"])]
    quant: Option<String>,
}

impl QuantArg {
    /// The type to load `path` with: the one asked for, else
    /// [`CheckpointInfo::inference_quant`]; `fallback` (a run's QLoRA type) comes before the
    /// default.
    pub fn resolve(&self, path: &Path, fallback: Option<WeightType>) -> Result<Option<WeightType>> {
        let ggml = |ty| Some(WeightType::Ggml(ty));
        Ok(match self.quant.as_deref() {
            Some("q8_0") => ggml(GgmlType::Q8_0),
            Some("q4_0") => ggml(GgmlType::Q4_0),
            Some("q4_1") => ggml(GgmlType::Q4_1),
            Some(_) => ggml(GgmlType::BF16),
            None if fallback.is_some() => fallback,
            None => CheckpointInfo::open(path)
                .with_context(|| format!("reading model {}", path.display()))?
                .inference_quant(),
        })
    }
}

#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 picks the most likely token every step (greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty on tokens already in the context (1: none).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the text contains this (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long, required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as token ids (comma-separated), used as given: for benchmarks that must feed
    /// two engines exactly the same tokens.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["prompt", "chat"])]
    prompt_ids: Vec<u32>,
    /// Keep generating past end-of-sequence tokens (benchmarks need a fixed length).
    #[arg(long)]
    ignore_eos: bool,
    /// Wrap the prompt as a user turn in the model's chat format.
    #[arg(long)]
    chat: bool,
    /// Constrain the answer to valid JSON (constrained decoding on the model's vocabulary).
    #[arg(long)]
    constrain_json: bool,
    /// Constrain the answer to this JSON schema's supported subset (types, properties,
    /// required, enum/const, items, anyOf, local $ref).
    #[arg(long, value_name = "FILE", conflicts_with = "constrain_json")]
    json_schema: Option<PathBuf>,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print timing (tokens/s) to stderr.
    #[arg(long)]
    stats: bool,
    /// Print timing and the generated ids to stderr as one JSON object (for `bench/decode.py`).
    #[arg(long)]
    stats_json: bool,
    #[command(flatten)]
    speak: crate::speak::SpeakArgs,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    bedrock: crate::bedrock::BedrockModelArg,
    /// System message for the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    speak: crate::speak::SpeakArgs,
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// UTF-8 text file to score.
    #[arg(long, value_name = "TEXT")]
    file: PathBuf,
    /// Print exactly {"tokens": N, "nll": MEAN_NLL_PER_TOKEN, "ppl": P}.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
}

/// `decode_layout` for commands that generate ([`LoadOptions::decode_layout`]); scoring
/// long windows reads the GGUF layout faster.
fn load_model(args: &ModelArgs, decode_layout: bool) -> Result<Model> {
    let path = match &args.model {
        Some(model) => crate::download::model_path(model)?,
        None => bora_formats::cache::default_model(),
    };
    let options = LoadOptions {
        context: args.context,
        quantize: args.quant.resolve(&path, None)?,
        decode_layout,
    };
    Model::load(&path, &options).with_context(|| format!("loading model {}", path.display()))
}

fn load_tokenizer(model: &Model) -> Result<Tokenizer> {
    let path = model.source();
    let tok = Tokenizer::from_file(path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    if tok.vocab_size() > model.config.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model only {}",
            path.display(),
            tok.vocab_size(),
            model.config.vocab_size
        );
    }
    Ok(tok)
}

fn load(args: &ModelArgs, decode_layout: bool) -> Result<(Model, Tokenizer)> {
    let model = load_model(args, decode_layout)?;
    let tok = load_tokenizer(&model)?;
    Ok((model, tok))
}

fn options(model: &Model, tok: &Tokenizer, s: &SamplingArgs) -> Result<GenerateOptions> {
    let sampling = SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        seed: s.seed,
    };
    sampling.validate().map_err(anyhow::Error::msg)?;
    let mut stop_tokens = model.config.eos_token_ids.clone();
    stop_tokens.extend(tok.eos_id());
    Ok(GenerateOptions {
        max_tokens: s.max_tokens,
        sampling,
        stop_tokens,
        stop_strings: s.stop.clone(),
    })
}

fn message(role: Role, text: &str) -> Message {
    Message {
        role,
        content: Some(Content::Text(text.to_string())),
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
        weight: None,
        prefix: false,
    }
}

fn chat_format(tok: &Tokenizer, model: &Path) -> Result<ChatFormat> {
    ChatFormat::from_tokenizer(tok).with_context(|| format!("{}: no chat format", model.display()))
}

/// Generates, printing the text as it comes and handing it to `speech` too.
fn stream(
    gen: &mut Generator<'_>,
    tok: &Tokenizer,
    ids: &[u32],
    opts: &GenerateOptions,
    mut speech: Option<&mut Speech>,
) -> Result<Generation> {
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    let generation = gen.generate_text(tok, ids, opts, |text| {
        if failed.is_none() {
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                failed = Some(e);
            }
        }
        if let Some(speech) = speech.as_deref_mut() {
            speech.push(text);
        }
    })?;
    if let Some(speech) = speech {
        speech.end_answer();
    }
    if let Some(e) = failed {
        return Err(e).context("writing to stdout");
    }
    Ok(generation)
}

fn print_stats(g: &Generation) {
    let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
    eprintln!(
        "prompt: {} tokens, {:.1} tokens/s; generated: {} tokens, {:.1} tokens/s; stop: {:?}",
        g.prefill_tokens,
        rate(g.prefill_tokens, g.prefill_time),
        g.tokens.len(),
        rate(g.tokens.len().saturating_sub(1), g.decode_time),
        g.stop
    );
}

pub fn generate(args: &GenerateArgs) -> Result<()> {
    let (model, tok) = load(&args.model, true)?;
    let mut opts = options(&model, &tok, &args.sampling)?;
    if args.ignore_eos {
        opts.stop_tokens.clear();
    }
    let ids = match &args.prompt {
        None => args.prompt_ids.clone(),
        Some(prompt) if args.chat => {
            let mut conv = Conversation {
                messages: Vec::new(),
                tools: Vec::new(),
            };
            if let Some(system) = &args.system {
                conv.messages.push(message(Role::System, system));
            }
            conv.messages.push(message(Role::User, prompt));
            chat_format(&tok, model.source())?
                .encode(&tok, &conv, true)?
                .ids
        }
        Some(prompt) => {
            let mut ids: Vec<u32> = model
                .config
                .bos_token_id
                .filter(|_| model.config.add_bos)
                .into_iter()
                .collect();
            ids.extend(tok.encode(prompt));
            ids
        }
    };
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    let mut gen = Generator::new(&model);
    let schema = match &args.json_schema {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            Some(JsonSchema::compile(&value).with_context(|| path.display().to_string())?)
        }
        None => args.constrain_json.then(JsonSchema::any_value),
    };
    if let Some(schema) = schema {
        let vocab = Arc::new(VocabIndex::new(&tok));
        gen.constrain_next(JsonConstraint::new(vocab, Arc::new(schema)));
    }
    let mut speech = args.speak.start()?;
    let g = stream(&mut gen, &tok, &ids, &opts, speech.as_mut())?;
    println!();
    if let Some(speech) = speech {
        speech.finish()?;
    }
    if args.stats {
        print_stats(&g);
    }
    if args.stats_json {
        eprintln!(
            "{}",
            serde_json::json!({
                "prefill_tokens": g.prefill_tokens,
                "prefill_s": g.prefill_time.as_secs_f64(),
                "decode_tokens": g.tokens.len().saturating_sub(1),
                "decode_s": g.decode_time.as_secs_f64(),
                "generated": g.tokens,
                "cpu": bora_compute::cpu_path().name(),
            })
        );
    }
    Ok(())
}

pub fn chat(args: &ChatArgs) -> Result<()> {
    if let Some(arn) = &args.bedrock.bedrock {
        return chat_bedrock(args, arn);
    }
    let (model, tok) = load(&args.model, true)?;
    let opts = options(&model, &tok, &args.sampling)?;
    let format = chat_format(&tok, model.source())?;
    let mut gen = Generator::new(&model);
    let who = model.source().display().to_string();
    let mut speech = args.speak.start()?;
    chat_loop(args.system.as_deref(), &who, |conv| {
        let ids = format.encode(&tok, conv, true)?.ids;
        Ok(stream(&mut gen, &tok, &ids, &opts, speech.as_mut())?.text)
    })?;
    match speech {
        Some(speech) => speech.finish(),
        None => Ok(()),
    }
}

/// The conversation of `bora chat`: one user message per stdin line; `answer` prints the
/// reply to stdout as it is written and returns it, and it joins the conversation.
fn chat_loop(
    system: Option<&str>,
    who: &str,
    mut answer: impl FnMut(&Conversation) -> Result<String>,
) -> Result<()> {
    let mut conv = Conversation {
        messages: Vec::new(),
        tools: Vec::new(),
    };
    if let Some(system) = system {
        conv.messages.push(message(Role::System, system));
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("Chatting with {who} (end with Ctrl-D)");
    }
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        conv.messages.push(message(Role::User, &line));
        let reply = answer(&conv);
        println!();
        conv.messages.push(message(Role::Assistant, &reply?));
    }
    Ok(())
}

/// `bora chat --bedrock ARN`: the same conversation loop, each answer streamed from the
/// imported model (InvokeModelWithResponseStream); only the tokenizer and chat format of
/// --model are loaded here.
fn chat_bedrock(args: &ChatArgs, arn: &str) -> Result<()> {
    let path = match &args.model.model {
        Some(model) => crate::download::model_path(model)?,
        None => bora_formats::cache::default_model(),
    };
    let tok = Tokenizer::from_file(&path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    let format = chat_format(&tok, &path)?;
    let aws = args.bedrock.connect()?;
    let s = &args.sampling;
    let params = bora_aws::InvokeParams {
        max_tokens: u32::try_from(s.max_tokens).unwrap_or(u32::MAX),
        temperature: s.temperature,
        top_p: s.top_p,
    };
    let who = format!("{arn} on Amazon Bedrock");
    let mut speech = args.speak.start()?;
    chat_loop(args.system.as_deref(), &who, |conv| {
        let ids = format.encode(&tok, conv, true)?.ids;
        let prompt = crate::bedrock::prompt_text(&tok, &ids);
        let mut stdout = std::io::stdout();
        let reply = aws.invoke_stream(arn, &prompt, &params, &mut |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
            if let Some(speech) = speech.as_mut() {
                speech.push(piece);
            }
        });
        if let Some(speech) = speech.as_mut() {
            speech.end_answer();
        }
        Ok(reply?)
    })?;
    match speech {
        Some(speech) => speech.finish(),
        None => Ok(()),
    }
}

pub fn perplexity(args: &PerplexityArgs) -> Result<()> {
    let (model, tok) = load(&args.model, false)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {} (it must be UTF-8 text)", args.file.display()))?;
    let tokens = tok.encode(&text);
    let window = args.model.context.unwrap_or(model.context().min(512));
    let p = bora_model::perplexity(&model, &tokens, window, &mut Workspace::new())
        .with_context(|| format!("scoring {}", args.file.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "tokens": p.tokens, "nll": p.nll, "ppl": p.ppl() })
        );
    } else {
        println!(
            "{} tokens scored in windows of {window}: mean NLL {:.4} nats, perplexity {:.3}",
            p.tokens,
            p.nll,
            p.ppl()
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn info(args: &InfoArgs) -> Result<()> {
    let model = load_model(&args.model, false)?;
    let c = &model.config;
    println!(
        "model:        {} ({})",
        model.source().display(),
        model.checkpoint_kind().name()
    );
    println!("architecture: {}", c.architecture);
    println!(
        "shape:        {} layers, hidden {}, ffn {}, {} heads / {} kv heads of {}, vocab {}",
        c.n_layers,
        c.hidden_size,
        c.intermediate_size,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.vocab_size
    );
    println!(
        "parameters:   {} ({:.1} M)",
        c.parameter_count(),
        c.parameter_count() as f64 / 1e6
    );
    let windows: Vec<String> = c
        .layer_windows
        .iter()
        .map(|w| w.map_or("full".into(), |w| w.to_string()))
        .collect();
    println!("attention:    {}", windows.join(","));
    println!(
        "rope:         theta {}, scaling {:?}{}",
        c.rope_theta,
        c.rope_scaling,
        c.query_scale.map_or(String::new(), |(b, m)| format!(
            ", query scale beta {b} per {m} positions"
        ))
    );
    println!("tied output:  {}", c.tied_embeddings);
    let dtypes: Vec<String> = model
        .dtype_summary()
        .iter()
        .map(|(ty, n, e)| format!("{ty} ({n} matrices, {:.1} M values)", *e as f64 / 1e6))
        .collect();
    println!("dtypes:       {}", dtypes.join(", "));
    // A checkpoint without tokenizer files is still worth describing.
    let (tokenizer, chat) = match load_tokenizer(&model) {
        Ok(tok) => {
            let chat = match ChatFormat::from_tokenizer(&tok) {
                Ok(ChatFormat::Mistral(f)) => format!("Mistral instruct {:?}", f.version()),
                Ok(ChatFormat::Jinja(_)) => "Jinja chat template".into(),
                Err(e) => format!("none ({e})"),
            };
            (
                format!("{:?}, {} tokens", tok.kind(), tok.vocab_size()),
                chat,
            )
        }
        Err(e) => (format!("none ({e:#})"), "none".into()),
    };
    println!("tokenizer:    {tokenizer}");
    println!("chat format:  {chat}");
    println!("kernel path:  {}", bora_compute::describe_cpu_path());
    println!(
        "memory:       weights {}, KV cache {} at a context of {} tokens",
        mib(model.weight_bytes()),
        mib(model.kv_cache_bytes()),
        model.context()
    );
    print_memory_needs(&model, args.model.quant.resolve(model.source(), None)?)?;
    Ok(())
}

/// Estimated peak memory to generate at the model's context, and to train at `bora train`'s
/// default batch, sequence length and rank, each way the base can be held; marks what does
/// not fit the memory available now.
fn print_memory_needs(model: &Model, quant: Option<WeightType>) -> Result<()> {
    let info = CheckpointInfo::open(model.source())?;
    let available = bora_data::available_memory()?;
    let mark = |bytes: u64| {
        let gib = bytes as f64 / f64::from(1u32 << 30);
        match available {
            Some(a) if bytes > a => format!("{gib:.2} GiB (does not fit)"),
            _ => format!("{gib:.2} GiB"),
        }
    };
    println!(
        "memory needed (estimates; available here: {}):",
        available.map_or("unknown".into(), |a| format!(
            "{:.2} GiB",
            a as f64 / f64::from(1u32 << 30)
        ))
    );
    let config = bora_train::RunConfig::default();
    let t = &config.train;
    println!(
        "  (training at bora train's defaults: batch {}, {} tokens, LoRA r{})",
        t.batch_size, t.seq_len, config.lora.rank
    );
    for (label, bytes) in bora_train::memory_by_use(&config, &info, quant, model.context())? {
        println!("  {label:<28}{}", mark(bytes));
    }
    Ok(())
}
