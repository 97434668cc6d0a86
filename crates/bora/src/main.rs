//! The bora command line: parse, load config, wire crates, show progress.
use clap::Parser;

#[derive(Parser)]
#[command(name = "bora", version, about = "Fine-tune Mistral-family models end to end")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
