//! Defaults that depend on what is trained. A setting the user left out (neither the config
//! file nor a flag names it) is chosen here from the model, the LoRA shape, the data and the
//! memory, instead of being a constant; each choice carries its reason, which `bora train`
//! prints once and writes at the top of the run's `config.toml`. The rules are small pure
//! functions so each can be tested, and read, on its own.
//!
//! Why these rules: with Adam every LoRA parameter moves about `lr` per step whatever its
//! gradient, so the size of the weight update grows with the LoRA scale (`alpha/r`, or
//! `alpha/√r` with rsLoRA) times √r (r random directions add up), and a small model needs
//! a larger relative change than a large one. A fixed `lr 1e-4` that suits LoRA r16 on a 7B
//! model barely moves a 135M model in an epoch: on a 1000-example, 5-class routing task the
//! fixed default scored 53% where `lr 1e-3` (same steps) scored 100%.

use std::collections::BTreeSet;
use std::fmt;

use bora_model::CheckpointInfo;
use bora_tokenizer::Tokenizer;

use crate::config::RunConfig;
use crate::error::Result;
use crate::lr_range::RANGE_STEPS;
use crate::recipe::{gib, plan_data, train_memory, DataPlan};

/// A setting bora chose, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The config key, e.g. `optim.lr`.
    pub key: &'static str,
    /// The value as it is written in `config.toml`.
    pub value: String,
    pub reason: String,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.key, self.value, self.reason)
    }
}

/// The settings whose defaults depend on the run (the others keep fixed defaults), and
/// `train.max_steps`, which when given leaves `train.epochs` as it is.
pub const ADAPTIVE_KEYS: [&str; 9] = [
    "optim.lr",
    "optim.warmup_steps",
    "train.epochs",
    "train.batch_size",
    "train.grad_accum",
    "train.eval_every",
    "data.val_fraction",
    "lora.rslora",
    "train.max_steps",
];

/// Which of [`ADAPTIVE_KEYS`] the user left for bora to choose. Empty (the `Default`) means
/// every setting is taken as given, as a config built in code (`bora demo`, tests) expects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unset {
    keys: BTreeSet<&'static str>,
}

impl Unset {
    /// Every adaptive key except those in `given` (dotted names, as a config file or flag
    /// sets them).
    pub fn except<'a>(given: impl IntoIterator<Item = &'a str>) -> Self {
        let given: BTreeSet<&str> = given.into_iter().collect();
        Unset {
            keys: ADAPTIVE_KEYS
                .into_iter()
                .filter(|k| !given.contains(k))
                .collect(),
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The learning rate that suits LoRA r16, alpha 32 (update scale 2) on a 135M model: the
/// default model's measured good value.
const REFERENCE_LR: f64 = 1e-3;
const REFERENCE_PARAMETERS: f64 = 135e6;
/// `scale · √r` of the reference adapter (2 · 4).
const REFERENCE_STEP_GAIN: f64 = 8.0;
/// Bounds of the rule: beyond them the range test (`--auto`) is the better guide.
const LR_RANGE: (f64, f64) = (2e-5, 3e-3);

/// The learning rate for LoRA of rank `rank` and scale numerator `alpha` on a model of
/// `parameters` weights: the reference rate scaled by `√(135M / parameters)` and divided by
/// how much larger this adapter's update per step is than the reference's (`scale · √r`).
/// LoRA r16 on a 7B model gets 1.4e-4, close to the 1e-4–2e-4 that LoRA recipes use there.
pub fn lora_lr(parameters: u64, rank: usize, alpha: f64, rslora: bool) -> f64 {
    let scale = if rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    };
    let gain = scale * (rank as f64).sqrt();
    let by_size = REFERENCE_LR * (REFERENCE_PARAMETERS / parameters.max(1) as f64).sqrt();
    let lr = by_size * REFERENCE_STEP_GAIN / gain;
    round_2_digits(lr.clamp(LR_RANGE.0, LR_RANGE.1))
}

/// rsLoRA from this rank up: below it `alpha/r` and `alpha/√r` differ by at most 4×, which
/// the learning rate absorbs; above it `alpha/r` shrinks the update enough that the rank's
/// extra capacity goes unused (Kalajdzievski, 2023).
pub const RSLORA_FROM_RANK: usize = 32;

/// At least this many optimizer steps when the user gives neither epochs nor max_steps: as
/// many as the range test of `--auto` makes, so a run on a set whose epoch is shorter costs at
/// most one pass plus a range test. What a small set needs is enough updates at a rate that
/// moves the adapter, not many passes: at the rule's rate one pass of 42 steps learned the
/// 1000-example routing task to 100%, and the earlier minimum of 100 steps made a
/// 200-example run three passes and three times the one-pass time.
pub const MIN_STEPS: u64 = RANGE_STEPS as u64;
/// At most this many epochs to reach [`MIN_STEPS`]: more passes over a tiny set memorize it.
pub const MAX_EPOCHS: u64 = 10;

/// Whole epochs that give at least [`MIN_STEPS`] optimizer steps, at most [`MAX_EPOCHS`]: one
/// pass whenever a pass is long enough, so a set is looped only when it is smaller than
/// [`MIN_STEPS`] steps, and then the run ends within one epoch of the minimum.
pub fn epochs_for(steps_per_epoch: u64) -> u64 {
    MIN_STEPS
        .div_ceil(steps_per_epoch.max(1))
        .clamp(1, MAX_EPOCHS)
}

/// Linear warm-up over 5% of the run (at least one step from 10 steps on, at most 100):
/// Adam's first moments are noisy, and a LoRA B that starts at zero makes the first steps'
/// gradients unrepresentative.
pub fn warmup_for(total_steps: u64) -> u64 {
    if total_steps < 10 {
        return 0;
    }
    (total_steps as f64 * 0.05).round().clamp(1.0, 100.0) as u64
}

/// Validations per run at most: enough for the loss curve and early stopping to see the
/// run's shape.
pub const MAX_EVALUATIONS: u64 = 10;
/// The share of the training compute that validations may cost. A validation pass is a
/// forward over the held-out examples, about a third of a training step over as many; at a
/// tenth, the validations cost no more than training on the examples held out would have.
pub const VALIDATION_SHARE: f64 = 0.1;

/// Validations for a run of `train_batches` micro-batches whose validation pass is
/// `val_batches` micro-batches: as many as cost at most [`VALIDATION_SHARE`] of training, at
/// least 1 (the last step's), at most [`MAX_EVALUATIONS`].
pub fn evaluations_for(train_batches: u64, val_batches: u64) -> u64 {
    let affordable = 3.0 * VALIDATION_SHARE * train_batches as f64 / val_batches.max(1) as f64;
    (affordable.floor() as u64).clamp(1, MAX_EVALUATIONS)
}

/// Validation every `total_steps / evaluations` steps, so they spread over the run.
pub fn eval_every_for(total_steps: u64, evaluations: u64) -> u64 {
    total_steps.div_ceil(evaluations.max(1)).max(1)
}

/// Fewer training examples than this get no validation split: every one is needed to learn.
pub const MIN_EXAMPLES_FOR_SPLIT: usize = 50;
/// Validation examples held out: 10% of the data, at least 10 (a score on fewer says
/// little), at most 50 (the end-of-run held-out score reads 50, and every validation pass
/// costs a forward over all of them: more would buy a loss precision nobody reads with
/// fewer validations).
pub fn holdout_for(examples: usize) -> usize {
    if examples < MIN_EXAMPLES_FOR_SPLIT {
        return 0;
    }
    (examples / 10).clamp(10, 50)
}

/// Sequences per optimizer step bora aims for.
pub const SEQUENCES_PER_STEP: usize = 4;

/// The largest micro-batch of 4, 2 or 1 sequences whose step `fits` in memory (1 when none
/// does, so the memory check reports the smallest need), and the accumulation that keeps
/// [`SEQUENCES_PER_STEP`] sequences per step.
pub fn batch_for(mut fits: impl FnMut(usize) -> bool) -> (usize, u32) {
    let batch = [4, 2, 1].into_iter().find(|&b| fits(b)).unwrap_or(1);
    (batch, (SEQUENCES_PER_STEP / batch) as u32)
}

/// Chooses every setting of `config` in `unset` for `info`'s model, the data and
/// `available` bytes of memory (`None`: unknown), in the order each depends on the last:
/// batch, rsLoRA, learning rate, validation split, epochs, warm-up, validation interval.
/// Returns the data plan of the resolved config and the choices, in that order.
pub fn choose_defaults(
    config: &mut RunConfig,
    unset: &Unset,
    info: &CheckpointInfo,
    tokenizer: &Tokenizer,
    available: Option<u64>,
) -> Result<(DataPlan, Vec<Choice>)> {
    let mut choices = Vec::new();
    let mut choose = |key: &'static str, value: String, reason: String| {
        choices.push(Choice { key, value, reason })
    };

    if unset.contains("train.batch_size") {
        let mut peaks = Vec::new();
        let (batch, accum) = batch_for(|b| {
            let mut c = config.clone();
            c.train.batch_size = b;
            let peak = train_memory(&c, info).map_or(u64::MAX, |p| p.peak_bytes);
            peaks.push(peak);
            available.is_none_or(|a| peak <= a)
        });
        config.train.batch_size = batch;
        if unset.contains("train.grad_accum") {
            config.train.grad_accum = accum;
        }
        let peak = peaks.last().copied().unwrap_or(0);
        let memory = match available {
            Some(a) => format!("{:.2} GiB of {:.2} GiB available", gib(peak), gib(a)),
            None => format!("{:.2} GiB; available memory unknown", gib(peak)),
        };
        let why = if batch == SEQUENCES_PER_STEP {
            "fits"
        } else {
            "the largest micro-batch that fits"
        };
        choose(
            "train.batch_size",
            batch.to_string(),
            format!(
                "{batch} × {} tokens, {} per step: {why} ({memory}); --batch-size to override",
                config.train.seq_len,
                batch * config.train.grad_accum as usize,
            ),
        );
    }

    let lora = &mut config.lora;
    if unset.contains("lora.rslora") && lora.rank >= RSLORA_FROM_RANK && !lora.rslora {
        lora.rslora = true;
        choose(
            "lora.rslora",
            "true".into(),
            format!(
                "rank {} ≥ {RSLORA_FROM_RANK}: alpha/√r keeps a high rank learning; --rslora \
                 false to override",
                lora.rank
            ),
        );
    }

    let parameters = info.config.parameter_count();
    if unset.contains("optim.lr") {
        let lr = lora_lr(parameters, lora.rank, lora.alpha, lora.rslora);
        config.optim.lr = lr;
        choose(
            "optim.lr",
            format!("{lr:e}"),
            format!(
                "{}LoRA r{} alpha {} on a {} model; --lr to override",
                if lora.rslora { "rs" } else { "" },
                lora.rank,
                lora.alpha,
                model_size(parameters)
            ),
        );
    }

    let mut plan = plan_data(config, tokenizer)?;
    let no_val = config.data.eval_path().is_none() && config.data.val_fraction == 0.0;
    if unset.contains("data.val_fraction") && no_val {
        let examples = plan.lengths.len();
        let held = holdout_for(examples);
        if held > 0 {
            config.data.val_fraction = held as f64 / examples as f64;
            plan = plan_data(config, tokenizer)?;
            choose(
                "data.val_fraction",
                config.data.val_fraction.to_string(),
                format!(
                    "{held} of {examples} examples held out for validation, drawn with \
                     train.seed {}; --val FILE or --val-fraction to override",
                    config.train.seed
                ),
            );
        } else {
            choose(
                "data.val_fraction",
                "0".into(),
                format!(
                    "no validation split: {examples} examples are fewer than \
                     {MIN_EXAMPLES_FOR_SPLIT}, each one is needed to learn; --val FILE to \
                     give one"
                ),
            );
        }
    }

    let steps_per_epoch = plan
        .micro_per_epoch
        .div_ceil(u64::from(config.train.grad_accum));
    if unset.contains("train.epochs") && unset.contains("train.max_steps") {
        let epochs = epochs_for(steps_per_epoch);
        config.train.epochs = epochs;
        plan.total_steps = config.total_steps(plan.micro_per_epoch);
        let why = if epochs == 1 {
            format!(
                "one pass: an epoch is {steps_per_epoch} steps, at least {MIN_STEPS}; more \
                 passes would cost time without a better score"
            )
        } else if epochs == MAX_EPOCHS {
            format!(
                "an epoch is {steps_per_epoch} steps; {MIN_STEPS} would take more than \
                 {MAX_EPOCHS} passes, which memorize a set this small"
            )
        } else {
            format!(
                "an epoch is {steps_per_epoch} steps; {epochs} make {} (at least {MIN_STEPS})",
                plan.total_steps
            )
        };
        choose(
            "train.epochs",
            epochs.to_string(),
            format!("{why}; --epochs or --max-steps to override"),
        );
    }

    let total = plan.total_steps;
    if unset.contains("optim.warmup_steps") {
        config.optim.warmup_steps = warmup_for(total);
        choose(
            "optim.warmup_steps",
            config.optim.warmup_steps.to_string(),
            format!("5% of {total} steps; --warmup-steps to override"),
        );
    }
    if unset.contains("train.eval_every") && !plan.val.is_empty() {
        let val_batches = plan.val_batches();
        let evaluations = evaluations_for(plan.micro_batches(config), val_batches);
        config.train.eval_every = eval_every_for(total, evaluations);
        choose(
            "train.eval_every",
            config.train.eval_every.to_string(),
            format!(
                "{evaluations} validations over {total} steps: each is {val_batches} \
                 forward micro-batches, and together they cost at most a tenth of training \
                 (at most {MAX_EVALUATIONS}); --eval-every to override"
            ),
        );
    }
    config.validate()?;
    Ok((plan, choices))
}

/// `x` with two significant digits, so printed and saved rates read as the rule means them
/// (`1.4e-4`, not `1.3655e-4`).
fn round_2_digits(x: f64) -> f64 {
    format!("{x:.1e}").parse().unwrap_or(x)
}

/// A parameter count as people say it: `135M`, `7.2B`.
pub fn model_size(parameters: u64) -> String {
    let p = parameters as f64;
    if p >= 1e9 {
        format!("{:.1}B", p / 1e9)
    } else if p >= 1e6 {
        format!("{:.0}M", p / 1e6)
    } else {
        format!("{:.0}K", p / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_follows_model_size_and_the_adapters_update_scale() {
        // The reference: the default model with the default adapter.
        assert_eq!(lora_lr(135_000_000, 16, 32.0, false), 1e-3);
        // A 7B model: about √52 smaller.
        assert_eq!(lora_lr(7_240_000_000, 16, 32.0, false), 1.4e-4);
        // Half the alpha, half the update per step: twice the rate.
        assert_eq!(lora_lr(135_000_000, 16, 16.0, false), 2e-3);
        // rsLoRA at r64 with alpha 32 has scale 4 and gain 32: a quarter of the rate.
        assert_eq!(lora_lr(135_000_000, 64, 32.0, true), 2.5e-4);
        // Tiny and huge models stay inside the rule's bounds.
        assert_eq!(lora_lr(1_000_000, 16, 32.0, false), LR_RANGE.1);
        assert_eq!(lora_lr(10_000_000_000_000, 16, 32.0, false), LR_RANGE.0);
    }

    #[test]
    fn a_set_is_looped_only_when_one_pass_is_short_of_the_minimum() {
        // A pass long enough is the whole run: no set of 36 steps or more loops.
        for steps_per_epoch in [MIN_STEPS, 45, 225, 10_000] {
            assert_eq!(epochs_for(steps_per_epoch), 1, "{steps_per_epoch}");
        }
        // A shorter pass is repeated until the minimum is reached, and the run ends less
        // than one pass beyond it.
        for steps_per_epoch in [5, 12, 20, MIN_STEPS - 1] {
            let steps = epochs_for(steps_per_epoch) * steps_per_epoch;
            assert!(steps >= MIN_STEPS, "{steps_per_epoch}: {steps}");
            assert!(
                steps < MIN_STEPS + steps_per_epoch,
                "{steps_per_epoch}: {steps}"
            );
        }
        // A tiny set stops at the cap rather than being memorized.
        assert_eq!(epochs_for(3), MAX_EPOCHS);
        assert_eq!(epochs_for(0), MAX_EPOCHS);
    }

    #[test]
    fn a_short_set_costs_at_most_one_pass_and_a_range_test() {
        // With one micro-batch a step, a range test is RANGE_STEPS micro-batches: the
        // defaults' steps never exceed the fixed one-pass run's by more.
        for steps_per_epoch in 1..200 {
            let steps = epochs_for(steps_per_epoch) * steps_per_epoch;
            assert!(
                steps <= steps_per_epoch + RANGE_STEPS as u64,
                "{steps_per_epoch}: {steps}"
            );
        }
    }

    #[test]
    fn warmup_is_five_percent_within_bounds() {
        assert_eq!(warmup_for(5), 0);
        assert_eq!(warmup_for(10), 1);
        assert_eq!(warmup_for(126), 6);
        assert_eq!(warmup_for(100_000), 100);
    }

    #[test]
    fn holdout_is_a_tenth_between_10_and_50_and_none_for_tiny_sets() {
        assert_eq!(holdout_for(MIN_EXAMPLES_FOR_SPLIT - 1), 0);
        assert_eq!(holdout_for(MIN_EXAMPLES_FOR_SPLIT), 10);
        assert_eq!(holdout_for(300), 30);
        assert_eq!(holdout_for(5000), 50);
    }

    #[test]
    fn validations_cost_at_most_a_tenth_of_training() {
        // A pass forward over the held-out batches costs a third of training on as many.
        for (train, val) in [(45, 5), (238, 13), (1238, 13), (900, 25), (10, 3)] {
            let evaluations = evaluations_for(train, val);
            let cost = (evaluations * val) as f64 / 3.0;
            assert!(
                evaluations == 1 || cost <= VALIDATION_SHARE * train as f64,
                "{train}/{val}: {evaluations}"
            );
            // One more would cost more than the share, unless the cap stops it first.
            let one_more = ((evaluations + 1) * val) as f64 / 3.0;
            assert!(
                evaluations == MAX_EVALUATIONS || one_more > VALIDATION_SHARE * train as f64,
                "{train}/{val}: {evaluations}"
            );
        }
        // The last step's validation is always made.
        assert_eq!(evaluations_for(10, 30), 1);
        assert_eq!(evaluations_for(100_000, 1), MAX_EVALUATIONS);
    }

    #[test]
    fn validations_spread_over_the_run() {
        assert_eq!(eval_every_for(45, 2), 23);
        assert_eq!(eval_every_for(238, 5), 48);
        assert_eq!(eval_every_for(3, 10), 1);
    }

    #[test]
    fn batch_is_the_largest_that_fits_with_accumulation_to_four_sequences() {
        assert_eq!(batch_for(|_| true), (4, 1));
        assert_eq!(batch_for(|b| b <= 2), (2, 2));
        assert_eq!(batch_for(|_| false), (1, 4));
    }

    #[test]
    fn unset_keys_are_the_adaptive_ones_not_given() {
        let unset = Unset::except(["optim.lr", "lora.rank"]);
        assert!(!unset.contains("optim.lr"));
        assert!(unset.contains("train.epochs"));
        assert!(!unset.contains("lora.rank"));
        assert!(Unset::default().is_empty());
    }

    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(model_size(134_515_008), "135M");
        assert_eq!(model_size(7_241_732_096), "7.2B");
    }
}
