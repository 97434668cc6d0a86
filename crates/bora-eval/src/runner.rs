//! The base-vs-tuned runner: greedy generation and teacher-forced NLL for one side (the base
//! model, or the base with an unmerged adapter), on the same prepared prompts.

use bora_model::{GenerateOptions, Generator, KvCache, Logits, Lora, Model, Workspace};
use bora_tokenizer::Tokenizer;

use crate::error::Result;
use crate::task::EvalItem;

/// What one side produced.
#[derive(Debug, Clone)]
pub struct SideOutput {
    pub answers: Vec<String>,
    /// Mean negative log-likelihood (nats) per answer token, over all items.
    pub nll: f64,
    /// Answer tokens scored.
    pub nll_tokens: usize,
}

/// Generates an answer for every item and scores the expected answers. Items run one after
/// another through one [`Generator`]: consecutive prompts share the chat format's prefix
/// (system prompt), which the generator's cache reuses instead of recomputing; the model has
/// no batched decode with separate caches. `on_item` sees the number of items done.
pub fn run_side(
    model: &Model,
    adapter: Option<&Lora>,
    tok: &Tokenizer,
    items: &[EvalItem],
    opts: &GenerateOptions,
    on_item: &mut dyn FnMut(usize),
) -> Result<SideOutput> {
    let mut generator = Generator::new(model);
    if let Some(a) = adapter {
        generator = generator.with_adapter(a);
    }
    let mut answers = Vec::with_capacity(items.len());
    let mut cache = model.new_cache();
    let mut ws = Workspace::new();
    let (mut nll_sum, mut nll_tokens) = (0.0, 0usize);
    for (i, item) in items.iter().enumerate() {
        let generation = generator.generate_text(tok, &item.prompt_ids, opts, |_| {})?;
        answers.push(generation.text);
        let (sum, count) = masked_nll(model, adapter, &item.ids, &item.mask, &mut cache, &mut ws)?;
        nll_sum += sum;
        nll_tokens += count;
        on_item(i + 1);
    }
    Ok(SideOutput {
        answers,
        nll: if nll_tokens == 0 {
            f64::NAN
        } else {
            nll_sum / nll_tokens as f64
        },
        nll_tokens,
    })
}

/// Summed NLL of the tokens the chat format's mask trains (the answer turns), each given
/// everything before it, and their count: the quantity training minimizes, on held-out data.
pub fn masked_nll(
    model: &Model,
    adapter: Option<&Lora>,
    ids: &[u32],
    mask: &[bool],
    cache: &mut KvCache,
    ws: &mut Workspace,
) -> Result<(f64, usize)> {
    cache.clear();
    let logits = model.forward_adapted(ids, cache, ws, Logits::All, adapter)?;
    let vocab = model.config.vocab_size;
    let mut sum = 0.0;
    let mut count = 0;
    for (pos, (&target, &trained)) in ids.iter().zip(mask).enumerate().skip(1) {
        if !trained {
            continue;
        }
        let row = &logits[(pos - 1) * vocab..pos * vocab];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_z = max
            + row
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        sum += log_z - row[target as usize] as f64;
        count += 1;
    }
    Ok((sum, count))
}
