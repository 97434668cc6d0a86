//! The base-vs-tuned runner: generation and teacher-forced NLL for one side (the base model,
//! or the base with an unmerged adapter), on the same prepared prompts.
//!
//! Generation is batched the way `bora serve` batches requests: up to `batch_size` examples
//! are in flight, each prefilled alone into its own cache, and every step decodes one token
//! of all of them in one [`Model::forward_decode`] call, so each weight is read once per step
//! for the whole batch rather than once per example. An example that ends leaves between
//! steps and the next one in the queue takes its row, so the batch stays full until the
//! queue runs dry.

use std::sync::Arc;
use std::time::Instant;

use bora_model::{
    decode_step, GenerateOptions, JsonConstraint, JsonSchema, KvCache, Logits, Lora, Model, Rng,
    SamplingParams, Sequence, VocabIndex, Workspace,
};
use bora_tokenizer::Tokenizer;

use crate::error::Result;
use crate::eval::AnswerUsage;
use crate::task::EvalItem;

/// What one side produced.
#[derive(Debug, Clone)]
pub struct SideOutput {
    pub answers: Vec<String>,
    /// Each answer's token counts and latency, in item order.
    pub usage: Vec<AnswerUsage>,
    /// Mean negative log-likelihood (nats) per answer token, over all items.
    pub nll: f64,
    /// Answer tokens scored.
    pub nll_tokens: usize,
}

/// The sampling seed of the example on line `line` of the test file. Each example gets its
/// own sampler, seeded from the run's seed and the example's line rather than its place in
/// a batch, so a sampled answer is the same whatever the batch size, `--limit` or the
/// examples decoded beside it; mixing the two through SplitMix64 keeps neighbouring lines'
/// streams unrelated.
pub fn example_seed(seed: u64, line: usize) -> u64 {
    Rng::new(seed ^ (line as u64).wrapping_mul(bora_rng::GAMMA)).next_u64()
}

/// Generates an answer for every item, `batch_size` at a time (see the module doc), and
/// scores the expected answers. `opts.sampling.seed` is the run's seed ([`example_seed`]).
/// `on_item` sees the number of items done, which finish out of order.
///
/// Each answer is the one a lone [`bora_model::Generator`] gives from an empty cache: a row
/// has its own cache, sampler and stop matcher, and a decode step computes each row's logits
/// bit for bit as a one-row step does (see [`Model::forward_decode`]), so no near-tie between
/// two tokens can go another way in a batch.
pub fn run_side(
    model: &Model,
    adapter: Option<&Lora>,
    tok: &Tokenizer,
    items: &[EvalItem],
    opts: &GenerateOptions,
    batch_size: usize,
    on_item: &mut dyn FnMut(usize),
) -> Result<SideOutput> {
    run_side_constrained(model, adapter, tok, items, opts, None, batch_size, on_item)
}

/// A schema every answer is decoded to (`bora eval --constrain-json`).
pub struct JsonAnswers {
    pub vocab: Arc<VocabIndex>,
    pub schema: Arc<JsonSchema>,
}

/// [`run_side`] with every answer constrained to `json`'s schema when given.
#[allow(clippy::too_many_arguments)]
pub fn run_side_constrained(
    model: &Model,
    adapter: Option<&Lora>,
    tok: &Tokenizer,
    items: &[EvalItem],
    opts: &GenerateOptions,
    json: Option<&JsonAnswers>,
    batch_size: usize,
    on_item: &mut dyn FnMut(usize),
) -> Result<SideOutput> {
    opts.sampling
        .validate()
        .map_err(bora_model::ModelError::Sampling)?;
    let batch_size = batch_size.max(1);
    let mut answers = vec![String::new(); items.len()];
    let mut usage = vec![AnswerUsage::default(); items.len()];
    let mut ws = Workspace::new();
    let mut spare: Vec<KvCache> = Vec::new();
    let mut active: Vec<Row> = Vec::with_capacity(batch_size);
    let mut queue = items.iter().enumerate();
    let (mut nll_sum, mut nll_tokens, mut done) = (0.0, 0usize, 0usize);
    loop {
        while active.len() < batch_size {
            let Some((index, item)) = queue.next() else {
                break;
            };
            let cache = spare.pop().unwrap_or_else(|| model.new_cache());
            let (row, (sum, count)) =
                Row::prefill(model, adapter, tok, item, index, opts, json, cache, &mut ws)?;
            nll_sum += sum;
            nll_tokens += count;
            active.push(row);
        }
        if active.is_empty() {
            break;
        }
        let mut i = 0;
        while i < active.len() {
            match active[i].seq.advance(&opts.stop_tokens).1 {
                None => i += 1,
                Some(stop) => {
                    let Row {
                        index,
                        seq,
                        started,
                    } = active.swap_remove(i);
                    usage[index] = AnswerUsage {
                        prompt_tokens: items[index].prompt_ids.len() as u64,
                        completion_tokens: seq.generated() as u64,
                        seconds: started.elapsed().as_secs_f64(),
                    };
                    let (_, answer, cache) = seq.finish(stop);
                    answers[index] = answer;
                    spare.push(cache);
                    done += 1;
                    on_item(done);
                }
            }
        }
        if !active.is_empty() {
            decode(model, adapter, &mut active, &mut ws)?;
        }
    }
    Ok(SideOutput {
        answers,
        usage,
        nll: if nll_tokens == 0 {
            f64::NAN
        } else {
            nll_sum / nll_tokens as f64
        },
        nll_tokens,
    })
}

/// One example being generated.
struct Row<'t> {
    /// Its place in the items (answers are returned in item order).
    index: usize,
    seq: Sequence<'t>,
    /// When its prompt went in: its answer's latency runs from here to its last token (the
    /// expected answer's NLL, scored in the same pass when it continues the prompt,
    /// included).
    started: Instant,
}

impl<'t> Row<'t> {
    /// Runs `item`'s prompt into `cache` (cleared first), keeps the logits of the first
    /// answer token, and scores the expected answer ([`masked_nll`]'s sum and count).
    ///
    /// The prompt runs alone, as a lone generator runs it, so the answer is exactly that
    /// generator's. When the example is the prompt followed by an answer that alone is scored
    /// (one turn), the NLL reuses that prefill: the prompt's logits score the answer's first
    /// token and the rest of the example continues the prompt's cache, which is then cut back
    /// to the prompt. The prompt is then run once instead of twice, which was most of an
    /// evaluation's work (answers are short). The sum differs from a whole-example pass only
    /// in float rounding, since fewer rows go through each product.
    #[allow(clippy::too_many_arguments)]
    fn prefill(
        model: &Model,
        adapter: Option<&Lora>,
        tok: &'t Tokenizer,
        item: &EvalItem,
        index: usize,
        opts: &GenerateOptions,
        json: Option<&JsonAnswers>,
        mut cache: KvCache,
        ws: &mut Workspace,
    ) -> Result<(Row<'t>, (f64, usize))> {
        let p = item.prompt_ids.len();
        let continues = p > 0
            && item.ids.len() > p
            && item.mask.len() == item.ids.len()
            && item.ids.starts_with(&item.prompt_ids)
            && !item.mask[..p].contains(&true);
        let nll = if continues {
            (0.0, 0)
        } else {
            masked_nll(model, adapter, &item.ids, &item.mask, &mut cache, ws)?
        };
        cache.clear();
        let started = Instant::now();
        let logits = model
            .forward_adapted(&item.prompt_ids, &mut cache, ws, Logits::Last, adapter)?
            .to_vec();
        let nll = if continues {
            let vocab = model.config.vocab_size;
            let (mut sum, mut count) = (0.0, 0);
            if item.mask[p] {
                sum += token_nll(&logits, item.ids[p]);
                count += 1;
            }
            let rest = &item.ids[p..item.ids.len() - 1];
            if item.mask[p + 1..].contains(&true) {
                let out = model.forward_adapted(rest, &mut cache, ws, Logits::All, adapter)?;
                for (i, row) in out.chunks_exact(vocab).enumerate() {
                    if item.mask[p + 1 + i] {
                        sum += token_nll(row, item.ids[p + 1 + i]);
                        count += 1;
                    }
                }
                cache.truncate(p);
            }
            (sum, count)
        } else {
            nll
        };
        let sampling = SamplingParams {
            seed: example_seed(opts.sampling.seed, item.line),
            ..opts.sampling.clone()
        };
        let mut seq = Sequence::new(
            tok,
            cache,
            &item.prompt_ids,
            sampling,
            opts.stop_strings.clone(),
            opts.max_tokens,
        );
        if let Some(j) = json {
            seq = seq.with_constraint(JsonConstraint::new(j.vocab.clone(), j.schema.clone()));
        }
        seq.prefilled(logits);
        Ok((
            Row {
                index,
                seq,
                started,
            },
            nll,
        ))
    }
}

/// Runs every row's sampled token through the model in one batched step.
fn decode(
    model: &Model,
    adapter: Option<&Lora>,
    rows: &mut [Row<'_>],
    ws: &mut Workspace,
) -> Result<()> {
    let adapters = vec![adapter; rows.len()];
    let mut seqs: Vec<&mut Sequence<'_>> = rows.iter_mut().map(|r| &mut r.seq).collect();
    Ok(decode_step(model, &mut seqs, &adapters, ws)?)
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
        if trained {
            sum += token_nll(&logits[(pos - 1) * vocab..pos * vocab], target);
            count += 1;
        }
    }
    Ok((sum, count))
}

/// −log softmax(`logits`)[`target`], in f64 so a long sum of them keeps its digits.
fn token_nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_z = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    log_z - logits[target as usize] as f64
}
