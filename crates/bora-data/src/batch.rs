//! Shuffling, packing and batching into fixed `[batch, seq_len]` arrays, from a position a
//! checkpoint can store.
//!
//! An epoch's plan (its order and packing) is a pure function of the seed, the epoch number and
//! the samples, so a run resumed at `(epoch, index)` rebuilds the same plan and continues with
//! the very next row, bit for bit.

use serde::{Deserialize, Serialize};

use crate::encode::Sample;
use crate::error::DataError;
use bora_rng::SplitMix64;

/// Where the data stream stands: the epoch and the next row (sequence) of that epoch's plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub index: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchConfig {
    /// Rows (sequences) per batch.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Put several short examples in one row; attention never crosses between them.
    pub pack: bool,
    pub seed: u64,
    /// Id written into padding (masked out of the loss either way).
    pub pad_id: u32,
}

/// One batch, every array `[batch_size · seq_len]` row-major.
///
/// The model reads `inputs` and predicts `targets` where `loss_mask` is set. `positions`
/// restart at 0 for each example (RoPE positions), and `segments` are the cumulative starts of
/// the examples over the flattened batch, `[0, end₀, end₁, …, batch·seq_len]` (padding runs are
/// segments too), the form `bora_compute::attention_forward` takes, so a token never attends
/// to another example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub loss_mask: Vec<bool>,
    pub positions: Vec<u32>,
    pub segments: Vec<usize>,
}

impl Batch {
    pub fn trained_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// Groups samples (visited in `order`) into rows of at most `seq_len` tokens: one sample per
/// row, or with `pack` as many consecutive ones as fit (first fit in order, so the plan stays
/// a simple function of the order). Every length must be in `1..=seq_len`.
pub fn pack_rows(
    lengths: &[usize],
    order: &[usize],
    seq_len: usize,
    pack: bool,
) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut used = seq_len;
    for &i in order {
        if !pack || used + lengths[i] > seq_len {
            rows.push(Vec::new());
            used = 0;
        }
        used += lengths[i];
        if let Some(row) = rows.last_mut() {
            row.push(i);
        }
    }
    rows
}

/// Serves batches for training, epoch after epoch.
pub struct Loader<'a> {
    samples: &'a [Sample],
    config: BatchConfig,
    position: DataPosition,
    rows: Vec<Vec<usize>>,
}

impl<'a> Loader<'a> {
    /// A loader that continues at `position` (`DataPosition::default()` for a fresh run).
    pub fn new(
        samples: &'a [Sample],
        config: BatchConfig,
        position: DataPosition,
    ) -> Result<Loader<'a>, DataError> {
        if config.batch_size == 0 || config.seq_len < 2 {
            return Err(DataError::Config(format!(
                "batch size must be ≥ 1 and sequence length ≥ 2 (got {} and {})",
                config.batch_size, config.seq_len
            )));
        }
        if samples.is_empty() {
            return Err(DataError::Empty("training set".into()));
        }
        if let Some(s) = samples
            .iter()
            .find(|s| s.is_empty() || s.len() > config.seq_len)
        {
            return Err(DataError::Config(format!(
                "the example from line {} has {} tokens; every example must have 1 to {} (fit the data to the sequence length first)",
                s.line,
                s.len(),
                config.seq_len
            )));
        }
        let rows = Loader::plan(samples, &config, position.epoch);
        if position.index > rows.len() as u64 {
            return Err(DataError::Config(format!(
                "data position {}:{} is past the end of that epoch ({} rows); did the data or its settings change since the checkpoint?",
                position.epoch,
                position.index,
                rows.len()
            )));
        }
        Ok(Loader {
            samples,
            config,
            position,
            rows,
        })
    }

    /// The rows of `epoch`: a seeded shuffle of all samples, then packing.
    pub fn plan(samples: &[Sample], config: &BatchConfig, epoch: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..samples.len()).collect();
        SplitMix64::stream(config.seed, 1 + epoch).shuffle(&mut order);
        let lengths: Vec<usize> = samples.iter().map(Sample::len).collect();
        pack_rows(&lengths, &order, config.seq_len, config.pack)
    }

    /// Batches in the current epoch; the last one is padded with empty rows if short.
    pub fn batches_in_epoch(&self) -> usize {
        self.rows.len().div_ceil(self.config.batch_size)
    }

    /// The position of the next batch; store it with a checkpoint.
    pub fn position(&self) -> DataPosition {
        self.position
    }

    pub fn next_batch(&mut self) -> Batch {
        if self.position.index >= self.rows.len() as u64 {
            self.position = DataPosition {
                epoch: self.position.epoch + 1,
                index: 0,
            };
            self.rows = Loader::plan(self.samples, &self.config, self.position.epoch);
        }
        let start = self.position.index as usize;
        let end = (start + self.config.batch_size).min(self.rows.len());
        let batch = self.build(&self.rows[start..end]);
        self.position.index = end as u64;
        batch
    }

    fn build(&self, rows: &[Vec<usize>]) -> Batch {
        let (b, s, pad) = (
            self.config.batch_size,
            self.config.seq_len,
            self.config.pad_id,
        );
        let n = b * s;
        let mut batch = Batch {
            batch_size: b,
            seq_len: s,
            inputs: vec![pad; n],
            targets: vec![pad; n],
            loss_mask: vec![false; n],
            positions: vec![0; n],
            segments: vec![0],
        };
        for r in 0..b {
            let mut at = r * s;
            for &i in rows.get(r).map(Vec::as_slice).unwrap_or_default() {
                let sample = &self.samples[i];
                let len = sample.len();
                batch.inputs[at..at + len].copy_from_slice(&sample.ids);
                for t in 0..len {
                    batch.positions[at + t] = t as u32;
                }
                // Token t predicts token t + 1 of the same example; the last one predicts
                // nothing, so no target ever comes from the next example.
                batch.targets[at..at + len - 1].copy_from_slice(&sample.ids[1..]);
                batch.loss_mask[at..at + len - 1].copy_from_slice(&sample.mask[1..]);
                at += len;
                batch.segments.push(at);
            }
            if at < (r + 1) * s {
                batch.segments.push((r + 1) * s);
            }
        }
        batch
    }
}

/// How much of a dataset to hold out for validation when no validation file is given.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Holdout {
    /// A share of the examples, at least one when above 0.
    Fraction(f64),
    Count(usize),
}

/// Splits `items` into (train, validation) by a seeded draw that does not depend on the epoch
/// shuffles; both keep the file order.
pub fn split<T>(items: Vec<T>, holdout: Holdout, seed: u64) -> Result<(Vec<T>, Vec<T>), DataError> {
    let n = items.len();
    let n_val = match holdout {
        Holdout::Fraction(f) if !(0.0..1.0).contains(&f) => {
            return Err(DataError::Config(format!(
                "validation fraction {f} must be in [0, 1)"
            )))
        }
        Holdout::Fraction(f) if f > 0.0 => ((f * n as f64).round() as usize).max(1),
        Holdout::Fraction(_) => 0,
        Holdout::Count(c) => c,
    };
    if n_val > 0 && n_val >= n {
        return Err(DataError::Config(format!(
            "a validation split of {n_val} leaves none of the {n} examples to train on"
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::stream(seed, 0).shuffle(&mut order);
    let mut is_val = vec![false; n];
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let (mut train, mut val) = (Vec::with_capacity(n - n_val), Vec::with_capacity(n_val));
    for (item, v) in items.into_iter().zip(is_val) {
        if v {
            val.push(item);
        } else {
            train.push(item);
        }
    }
    Ok((train, val))
}
