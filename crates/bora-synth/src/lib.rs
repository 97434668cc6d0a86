//! bora-synth: a dataset from a teacher model, for a team with a few dozen examples and a
//! task description.
//!
//! The job is a numbered list of slots. Slot `i`'s request depends only on the settings, the
//! seed and `i` (which seed examples it shows, which topic or input it is about), so the same
//! command asks the same questions in any order and after any interruption. Each answered
//! slot is appended to `DIR/synth.log.jsonl` and fsynced before it counts; a rerun reads the
//! log and asks only for the slots it lacks. The dataset is then built from the log in slot
//! order (validation by bora-data's `data check` rules, near-duplicate removal on normalised
//! text, a seeded split), so an interrupted and resumed run writes the same files as an
//! uninterrupted one given the same teacher answers.
//!
//! The teacher is reached through [`bora_hub::chat::ChatClient`]; this crate holds the
//! pipeline (prompts, budget, log, dataset), which a client library must not.

#![forbid(unsafe_code)]

mod error;
mod job;
mod prompt;

pub use error::SynthError;
pub use job::{run, Progress, SynthConfig, SynthSummary, LOG_FILE, SUMMARY_FILE};
pub use prompt::{load_inputs, load_lines, load_seeds, normalise, SeedPair};
