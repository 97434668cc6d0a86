//! `bora tokenize`: show the ids (and for a chat, the loss mask) that training, eval and serving
//! would use, through the same `bora_tokenizer` calls they make.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bora_tokenizer::chat::{ChatFormat, Conversation, EncodedChat};
use bora_tokenizer::Tokenizer;
use clap::{ArgGroup, Args};

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["text", "file", "chat"])))]
pub struct TokenizeArgs {
    /// Tokenizer: a Mistral `.model[.vN]`, a Tekken `.json`, a `tokenizer.json`, a model
    /// directory, a `.gguf` file, or a Hub model `ORG/NAME[@REVISION][:FILE.gguf]` (only its
    /// tokenizer files are downloaded).
    #[arg(long, value_name = "PATH|ORG/NAME")]
    tokenizer: String,
    /// Text to encode as ordinary text (no BOS/EOS; control tokens in it stay text).
    #[arg(long)]
    text: Option<String>,
    /// A UTF-8 file whose whole content is encoded like --text.
    #[arg(long, value_name = "F")]
    file: Option<PathBuf>,
    /// A conversation (`{"messages": [...], "tools": [...]}`) to format with the tokenizer's
    /// chat format; prints the loss mask too.
    #[arg(long, value_name = "CONV.json")]
    chat: Option<PathBuf>,
    /// End the chat ids with the prompt for the next assistant turn (serving).
    #[arg(long)]
    add_generation_prompt: bool,
    /// Print one JSON object: {"ids": [...]} and, for --chat, "mask": [0/1, ...].
    #[arg(long)]
    json: bool,
}

pub fn run(args: &TokenizeArgs) -> Result<()> {
    if args.add_generation_prompt && args.chat.is_none() {
        anyhow::bail!("--add-generation-prompt applies to --chat only");
    }
    let path = crate::download::tokenizer_path(&args.tokenizer)?;
    let tok = Tokenizer::from_file(&path)
        .with_context(|| format!("loading tokenizer {}", path.display()))?;
    let (ids, mask) = if let Some(path) = &args.chat {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let conv = Conversation::from_json(&text).with_context(|| format!("{}", path.display()))?;
        let format = ChatFormat::from_tokenizer(&tok)
            .with_context(|| format!("tokenizer {}", path.display()))?;
        let EncodedChat { ids, mask } = format
            .encode(&tok, &conv, args.add_generation_prompt)
            .with_context(|| format!("formatting {}", path.display()))?;
        (ids, Some(mask))
    } else if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {} (it must be UTF-8 text)", path.display()))?;
        (tok.encode(&text), None)
    } else {
        let text = args
            .text
            .as_deref()
            .context("one of --text, --file or --chat is required")?;
        (tok.encode(text), None)
    };

    let mut out = std::io::stdout().lock();
    if args.json {
        let mut object = serde_json::json!({ "ids": ids });
        if let Some(mask) = &mask {
            object["mask"] = mask.iter().map(|&m| u8::from(m)).collect();
        }
        writeln!(out, "{object}")?;
        return Ok(());
    }
    writeln!(out, "{} tokens", ids.len())?;
    if let Some(mask) = &mask {
        let trained = mask.iter().filter(|&&m| m).count();
        writeln!(out, "{trained} trained (marked *)")?;
    }
    for (pos, &id) in ids.iter().enumerate() {
        let piece = tok
            .id_to_piece(id)
            .unwrap_or_else(|| "<out of vocabulary>".into());
        let mark = match &mask {
            Some(mask) if mask[pos] => "* ",
            Some(_) => "  ",
            None => "",
        };
        writeln!(out, "{mark}{pos:>6} {id:>8}  {piece:?}")?;
    }
    Ok(())
}
