//! The bora command line: parse, load config, wire crates, show progress. No logic of its own.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod bedrock;
mod data;
mod demo;
mod download;
mod eval;
mod export;
mod generate;
mod jobs;
mod judge;
mod push;
mod serve;
mod speak;
mod synth;
mod tokenize;
mod train;
mod wandb_models;
mod weave;

#[derive(Parser)]
#[command(
    name = "bora",
    version,
    about = "Fine-tune Mistral-family models end to end"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the path bora uses for the default model.
    DefaultModel,
    /// Show token ids (and a chat's loss mask) for text, a file or a conversation.
    Tokenize(tokenize::TokenizeArgs),
    /// Generate text from a prompt, streamed to stdout.
    Generate(generate::GenerateArgs),
    /// Chat with a model over stdin, one user message per line.
    Chat(generate::ChatArgs),
    /// Perplexity of a model on a text file.
    Perplexity(generate::PerplexityArgs),
    /// Describe a model: architecture, size, dtypes, tokenizer, chat format, memory.
    Info(generate::InfoArgs),
    /// Check a dataset: validation, token statistics, steps, memory and time preflight.
    Data(data::DataArgs),
    /// Fine-tune a LoRA adapter into runs/NAME (or --resume runs/NAME).
    Train(Box<train::TrainArgs>),
    /// Compare a fine-tune with its base model on held-out examples; write a report.
    Eval(Box<eval::EvalArgs>),
    /// The whole pipeline on the bundled demo task: data, train, eval, report.
    Demo(demo::DemoArgs),
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Write a run's adapter or merged model as peft, merged, gguf, gguf-lora or mistral,
    /// and prove it by loading it back.
    Export(Box<export::ExportArgs>),
    /// Publish a run to the Hugging Face Hub with a model card.
    Push(Box<push::PushArgs>),
    /// Deploy a run's merged model to a service: `bora deploy bedrock` (Amazon Bedrock).
    Deploy(Box<bedrock::DeployArgs>),
    /// Fetch a model by its Hub name into the Hugging Face cache (and print its path).
    Download(download::DownloadArgs),
    /// The Hugging Face Jobs of `bora train --on hf-jobs`: list, logs, cancel, attach.
    Jobs(jobs::JobsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bora_compute::select_cpu_path()?;
    match cli.command {
        Command::DefaultModel => println!("{}", bora_formats::cache::default_model().display()),
        Command::Tokenize(args) => tokenize::run(&args)?,
        Command::Generate(args) => generate::generate(&args)?,
        Command::Chat(args) => generate::chat(&args)?,
        Command::Perplexity(args) => generate::perplexity(&args)?,
        Command::Info(args) => generate::info(&args)?,
        Command::Data(args) => data::run(&args, &bora_formats::cache::default_model())?,
        Command::Train(args) => train::train(&args)?,
        Command::Eval(args) => eval::eval(&args)?,
        Command::Demo(args) => demo::demo(&args)?,
        Command::Serve(args) => serve::run(&args)?,
        Command::Export(args) => export::run(&args)?,
        Command::Push(args) => push::run(&args)?,
        Command::Download(args) => download::run(&args)?,
        Command::Deploy(args) => bedrock::deploy(&args)?,
        Command::Jobs(args) => jobs::run(&args)?,
    }
    Ok(())
}
