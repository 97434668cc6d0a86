//! What the teacher is asked: the task, a few seed examples, and either an input to answer
//! or a request for a new example as a JSON object.

use std::path::Path;

use bora_data::{read_jsonl, Example, SplitMix64};
use bora_hub::chat::Message;
use bora_tokenizer::chat::{Conversation, Role};
use serde::{Deserialize, Serialize};

use crate::error::SynthError;

/// A seed example as an (input, output) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedPair {
    pub input: String,
    pub output: String,
}

/// Reads seed examples in any of bora's dataset shapes: a chat gives its last user message
/// and the assistant answer after it, a prompt/completion pair gives itself. Plain `text`
/// lines have no input and are refused.
pub fn load_seeds(path: &Path) -> Result<Vec<SeedPair>, SynthError> {
    let read = read_jsonl(path).map_err(|e| SynthError::Config {
        what: e.to_string(),
    })?;
    if let Some(e) = read.errors.first() {
        return Err(SynthError::Input {
            path: path.to_path_buf(),
            line: e.line,
            what: format!("{}: {}", e.field, e.what),
        });
    }
    let mut seeds = Vec::new();
    for r in read.records {
        let bad = |what: &str| SynthError::Input {
            path: path.to_path_buf(),
            line: r.line,
            what: what.to_owned(),
        };
        let pair = match &r.example {
            Example::Completion { prompt, completion } => SeedPair {
                input: prompt.clone(),
                output: completion.clone(),
            },
            Example::Chat(conv) => {
                let (input, output) = last_turns(conv)
                    .ok_or_else(|| bad("a seed conversation needs a user message followed by an assistant answer"))?;
                SeedPair { input, output }
            }
            Example::Text(_) => {
                return Err(bad(
                    "a `text` example has no input and answer; give seeds as messages or prompt/completion",
                ))
            }
        };
        seeds.push(pair);
    }
    if seeds.is_empty() {
        return Err(SynthError::Config {
            what: format!("{}: no seed examples", path.display()),
        });
    }
    Ok(seeds)
}

/// The last assistant answer with text and the user message before it.
fn last_turns(conv: &Conversation) -> Option<(String, String)> {
    let m = &conv.messages;
    let a = m.iter().rposition(|x| x.role == Role::Assistant)?;
    let u = m[..a].iter().rposition(|x| x.role == Role::User)?;
    let output = m[a].text();
    (!output.is_empty()).then(|| (m[u].text(), output))
}

/// Non-empty lines of a text file (topics), trimmed.
pub fn load_lines(path: &Path) -> Result<Vec<String>, SynthError> {
    let text = std::fs::read_to_string(path).map_err(|source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        return Err(SynthError::Config {
            what: format!("{}: the file has no non-empty line", path.display()),
        });
    }
    Ok(lines)
}

/// Inputs to answer, one per line: plain text, or a JSON object with an `input` (or
/// `prompt`) string when an input spans lines.
pub fn load_inputs(path: &Path) -> Result<Vec<String>, SynthError> {
    let text = std::fs::read_to_string(path).map_err(|source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut inputs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| SynthError::Input {
                    path: path.to_path_buf(),
                    line: i + 1,
                    what: format!("invalid JSON: {e}"),
                })?;
            let input = ["input", "prompt"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|s| s.as_str()))
                .ok_or_else(|| SynthError::Input {
                    path: path.to_path_buf(),
                    line: i + 1,
                    what: "a JSON line needs an `input` (or `prompt`) string".into(),
                })?;
            inputs.push(input.to_owned());
        } else {
            inputs.push(line.to_owned());
        }
    }
    if inputs.is_empty() {
        return Err(SynthError::Config {
            what: format!("{}: no inputs", path.display()),
        });
    }
    Ok(inputs)
}

/// Text for duplicate detection: lower case, letters and digits only, single spaces. Two
/// inputs that differ only in case, punctuation or spacing are the same example.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Separates the topic draw of a slot from its seed-example draw.
const TOPIC_STREAM: u64 = 0x746f_7069_6373;

/// Seed examples shown per request.
const SHOWN: usize = 3;

/// The seeds slot `slot` shows, in order: a seeded draw without replacement.
fn shown_seeds(seeds: &[SeedPair], seed: u64, slot: u64) -> Vec<&SeedPair> {
    let mut idx: Vec<usize> = (0..seeds.len()).collect();
    SplitMix64::stream(seed, slot).shuffle(&mut idx);
    idx.iter().take(SHOWN).map(|&i| &seeds[i]).collect()
}

pub(crate) const GENERATE_SYSTEM: &str = "You write training examples for fine-tuning a language model on the task below. Each example is an input a user could send and the ideal output for it.\n\n# Task\n\n{task}";

pub(crate) const GENERATE_USER: &str = "Here are examples of the task:\n\n{examples}\n\nWrite one new example, different from these in content and wording{topic}. Answer with only a JSON object with two string fields: {\"input\": ..., \"output\": ...}.";

pub(crate) const ANSWER_SYSTEM: &str =
    "Do the task below. Answer each input with the output only, in the style of the examples.\n\n# Task\n\n{task}";

/// The messages of a slot that asks for a whole new example (input and output).
pub(crate) fn generate_messages(
    task: &str,
    seeds: &[SeedPair],
    topics: Option<&[String]>,
    seed: u64,
    slot: u64,
) -> Vec<Message> {
    let examples: Vec<String> = shown_seeds(seeds, seed, slot)
        .iter()
        .map(|s| serde_json::json!({"input": s.input, "output": s.output}).to_string())
        .collect();
    let topic = topics
        .map(|t| {
            let i = SplitMix64::stream(seed ^ TOPIC_STREAM, slot).below(t.len() as u64);
            format!(", about this topic: {}", t[i as usize])
        })
        .unwrap_or_default();
    vec![
        Message::new("system", GENERATE_SYSTEM.replace("{task}", task.trim())),
        Message::new(
            "user",
            GENERATE_USER
                .replace("{examples}", &examples.join("\n"))
                .replace("{topic}", &topic),
        ),
    ]
}

/// The messages of a slot that answers a given input: the seeds as earlier turns.
pub(crate) fn answer_messages(
    task: &str,
    seeds: &[SeedPair],
    input: &str,
    seed: u64,
    slot: u64,
) -> Vec<Message> {
    let mut m = vec![Message::new(
        "system",
        ANSWER_SYSTEM.replace("{task}", task.trim()),
    )];
    for s in shown_seeds(seeds, seed, slot) {
        m.push(Message::new("user", s.input.clone()));
        m.push(Message::new("assistant", s.output.clone()));
    }
    m.push(Message::new("user", input));
    m
}

/// The teacher's new example from its JSON answer (a code fence around it is tolerated).
pub(crate) fn parse_generated(content: &str) -> Option<SeedPair> {
    let t = content.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|s| s.strip_suffix("```"))
        .unwrap_or(t)
        .trim();
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let field = |k: &str| v.get(k)?.as_str().map(str::to_owned);
    Some(SeedPair {
        input: field("input")?,
        output: field("output")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_ignores_case_punctuation_and_spacing() {
        assert_eq!(normalise("  Hello,   World!\n"), "hello world");
        assert_eq!(normalise("hello world"), normalise("HELLO-world."));
        assert_ne!(normalise("hello world"), normalise("hello word"));
    }

    #[test]
    fn generated_examples_parse_strictly() {
        let p = parse_generated("```json\n{\"input\": \"a\", \"output\": \"b\"}\n```").unwrap();
        assert_eq!((p.input.as_str(), p.output.as_str()), ("a", "b"));
        assert!(parse_generated("{\"input\": \"a\"}").is_none());
        assert!(parse_generated("{\"input\": 1, \"output\": \"b\"}").is_none());
        assert!(parse_generated("input: a").is_none());
    }

    #[test]
    fn a_slot_shows_the_same_seeds_whatever_else_ran() {
        let seeds: Vec<SeedPair> = (0..10)
            .map(|i| SeedPair {
                input: format!("i{i}"),
                output: format!("o{i}"),
            })
            .collect();
        let a = generate_messages("t", &seeds, None, 5, 3);
        let b = generate_messages("t", &seeds, None, 5, 3);
        assert_eq!(a, b);
        assert_ne!(a, generate_messages("t", &seeds, None, 5, 4));
        assert_ne!(a, generate_messages("t", &seeds, None, 6, 3));
    }
}
