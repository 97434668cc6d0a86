//! Perplexity of a text: the mean negative log-likelihood per predicted token.

use crate::error::{ModelError, Result};
use crate::model::{Model, Workspace};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Tokens predicted (scored).
    pub tokens: usize,
    /// Mean negative log-likelihood per scored token, in nats.
    pub nll: f64,
}

impl Perplexity {
    pub fn ppl(&self) -> f64 {
        self.nll.exp()
    }
}

/// Scores `tokens` in consecutive, non-overlapping windows of at most `window` tokens (the
/// llama.cpp `perplexity` scheme). When the model wants BOS, each window starts with it and
/// every text token is scored; otherwise the first token of each window is context only.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    window: usize,
    ws: &mut Workspace,
) -> Result<Perplexity> {
    if window < 2 || window > model.context() {
        return Err(ModelError::Config {
            path: model.source().to_path_buf(),
            what: format!(
                "a perplexity window must be 2..={} tokens, got {window}",
                model.context()
            ),
        });
    }
    let bos = model.config.bos_token_id.filter(|_| model.config.add_bos);
    let step = if bos.is_some() { window - 1 } else { window };
    let mut sum = 0f64;
    let mut count = 0usize;
    let mut buf = Vec::with_capacity(window);
    for chunk in tokens.chunks(step) {
        buf.clear();
        buf.extend(bos);
        buf.extend_from_slice(chunk);
        if buf.len() < 2 {
            continue;
        }
        let ce = model.nll(&buf, ws)?;
        sum += ce.loss_sum;
        count += ce.count;
    }
    if count == 0 {
        return Err(ModelError::Empty(
            "the text has fewer than two tokens to score",
        ));
    }
    Ok(Perplexity {
        tokens: count,
        nll: sum / count as f64,
    })
}
