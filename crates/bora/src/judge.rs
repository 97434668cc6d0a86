//! `bora eval --metric judge[:MODEL]`: bora-hub's chat client as bora-eval's judge.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use bora_eval::{JudgeConfig, JudgeMode, JudgeModel};
use bora_hub::chat::{ChatClient, ChatRequest, Message, MISTRAL_BASE_URL, MISTRAL_KEY_ENV};
use clap::{Args, ValueEnum};

/// The judge Mistral's API answers when `--metric judge` names none.
const DEFAULT_JUDGE: &str = "mistral-large-latest";

#[derive(Args)]
pub struct JudgeArgs {
    /// What makes an answer good, for the judge (Markdown or text); a general rubric without it.
    #[arg(long, value_name = "FILE")]
    rubric: Option<PathBuf>,
    /// pairwise (which answer wins, both orders) or score (also a 1–10 score per side).
    #[arg(long, value_enum, default_value = "pairwise")]
    judge_mode: Mode,
    /// The judge's OpenAI-compatible API (ending in /v1).
    #[arg(long, default_value = MISTRAL_BASE_URL)]
    judge_base_url: String,
    /// The environment variable holding the judge's API key.
    #[arg(long, default_value = MISTRAL_KEY_ENV)]
    judge_api_key_env: String,
    /// Longest verdict, in tokens.
    #[arg(long, default_value_t = 512)]
    judge_max_tokens: u32,
    /// Judge requests in flight together.
    #[arg(long, default_value_t = 4)]
    judge_concurrency: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Pairwise,
    Score,
}

/// The judge model named by `--metric judge[:MODEL]`, or `None` for another metric.
pub fn judge_model(metric: &str) -> Option<&str> {
    match metric.split_once(':') {
        Some(("judge", m)) if !m.is_empty() => Some(m),
        None if metric == "judge" => Some(DEFAULT_JUDGE),
        _ => None,
    }
}

/// A judge over a chat-completions API: temperature 0, JSON mode.
pub struct RemoteJudge {
    client: ChatClient,
    model: String,
    max_tokens: u32,
}

impl JudgeModel for RemoteJudge {
    fn name(&self) -> &str {
        &self.model
    }

    fn ask(&self, messages: &[(&str, &str)]) -> Result<String, String> {
        let messages: Vec<Message> = messages.iter().map(|(r, c)| Message::new(r, *c)).collect();
        self.client
            .complete(&ChatRequest {
                model: &self.model,
                messages: &messages,
                temperature: Some(0.0),
                max_tokens: Some(self.max_tokens),
                seed: None,
                json: true,
            })
            .map(|r| r.content)
            .map_err(|e| e.to_string())
    }
}

/// The judge and its settings; the verdict cache goes to `cache`.
pub fn setup(args: &JudgeArgs, model: &str, cache: PathBuf) -> Result<(RemoteJudge, JudgeConfig)> {
    if args.judge_concurrency == 0 {
        bail!("--judge-concurrency must be at least 1");
    }
    let rubric = match &args.rubric {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading the rubric {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let client = ChatClient::new(&args.judge_base_url, &args.judge_api_key_env, |k| {
        std::env::var(k).ok()
    })?
    .with_timeout(Duration::from_secs(120));
    let judge = RemoteJudge {
        client,
        model: model.to_owned(),
        max_tokens: args.judge_max_tokens,
    };
    let config = JudgeConfig {
        mode: match args.judge_mode {
            Mode::Pairwise => JudgeMode::Pairwise,
            Mode::Score => JudgeMode::Score,
        },
        rubric,
        concurrency: args.judge_concurrency,
        cache,
    };
    Ok((judge, config))
}
