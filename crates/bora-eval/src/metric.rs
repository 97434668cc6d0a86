//! Task metrics: how one generated answer is judged against the expected one, and the
//! Wilson interval that says how much a score on n examples can be trusted.

use std::fmt;
use std::str::FromStr;

use crate::error::EvalError;

/// Most distinct answers [`Metric::infer`] reads as a class list.
const MAX_LABELS: usize = 20;
/// Most words of one class label.
const MAX_LABEL_WORDS: usize = 3;

/// How an answer is compared with the expected answer (the last assistant message).
#[derive(Debug, Clone)]
pub enum Metric {
    /// Equal after trimming whitespace at both ends.
    Exact,
    /// Both parse as JSON and are equal as values (key order and spacing do not matter).
    Json,
    /// The answer contains the (trimmed) expected text.
    Contains,
    /// The trimmed answer matches the pattern as a whole (the expected text is not used).
    Regex(Box<fancy_regex::Regex>, String),
    /// The trimmed answer is one of the labels and equal to the expected label.
    Choice(Vec<String>),
    /// The answer's tool calls equal the expected assistant message's: same functions in the
    /// same order, arguments equal as JSON values (call ids are not compared).
    ToolCall,
}

impl FromStr for Metric {
    type Err = EvalError;

    /// `exact`, `json`, `contains`, `regex:PATTERN` or `choice:A,B,C`.
    fn from_str(spec: &str) -> Result<Metric, EvalError> {
        let bad = |what: &str| EvalError::Metric {
            spec: spec.to_string(),
            what: what.to_string(),
        };
        let (kind, arg) = match spec.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (spec, None),
        };
        match (kind, arg) {
            ("exact", None) => Ok(Metric::Exact),
            ("json", None) => Ok(Metric::Json),
            ("contains", None) => Ok(Metric::Contains),
            ("tool_call", None) => Ok(Metric::ToolCall),
            ("regex", Some(pattern)) => {
                // Anchored as a group so alternations (`a|b`) must match the whole answer too.
                let full = format!("^(?:{pattern})$");
                let re = fancy_regex::Regex::new(&full)
                    .map_err(|e| bad(&format!("the pattern does not compile: {e}")))?;
                Ok(Metric::Regex(Box::new(re), pattern.to_string()))
            }
            ("choice", Some(list)) => {
                let labels: Vec<String> = list.split(',').map(|l| l.trim().to_string()).collect();
                if labels.iter().any(String::is_empty) {
                    return Err(bad("labels must be non-empty, e.g. choice:A,B,C"));
                }
                Ok(Metric::Choice(labels))
            }
            ("regex" | "choice", None) => {
                Err(bad("needs an argument: regex:PATTERN or choice:A,B,C"))
            }
            ("exact" | "json" | "contains" | "tool_call", Some(_)) => {
                Err(bad("takes no argument"))
            }
            _ => Err(bad(
                "unknown metric; use exact, json, contains, tool_call, regex:PATTERN or choice:A,B,C",
            )),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Exact => f.write_str("exact"),
            Metric::Json => f.write_str("json"),
            Metric::Contains => f.write_str("contains"),
            Metric::ToolCall => f.write_str("tool_call"),
            Metric::Regex(_, p) => write!(f, "regex:{p}"),
            Metric::Choice(labels) => write!(f, "choice:{}", labels.join(",")),
        }
    }
}

impl Metric {
    /// Whether `answer` is right. A regex that gives up (backtracking limit) counts as wrong.
    pub fn score(&self, answer: &str, expected: &str) -> bool {
        let answer = answer.trim();
        let expected = expected.trim();
        match self {
            Metric::Exact => answer == expected,
            Metric::Json => {
                let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
                match (parse(answer), parse(expected)) {
                    (Some(a), Some(e)) => a == e,
                    _ => false,
                }
            }
            Metric::Contains => answer.contains(expected),
            Metric::Regex(re, _) => re.is_match(answer).unwrap_or(false),
            Metric::Choice(labels) => answer == expected && labels.iter().any(|l| l == answer),
            Metric::ToolCall => match (tool_calls(answer), tool_calls(expected)) {
                (Some(a), Some(e)) => a == e,
                _ => false,
            },
        }
    }

    /// The metric a set of expected answers calls for, when nobody named one: `json` when
    /// every answer is a JSON object or array (key order and spacing then do not count),
    /// `choice` over the labels when the answers are a few short labels each seen more than
    /// once on average (a classification), `exact` otherwise.
    pub fn infer<S: AsRef<str>>(expected: &[S]) -> Metric {
        let answers: Vec<&str> = expected.iter().map(|s| s.as_ref().trim()).collect();
        let structured = |a: &&str| {
            matches!(
                serde_json::from_str::<serde_json::Value>(a),
                Ok(serde_json::Value::Object(_) | serde_json::Value::Array(_))
            )
        };
        if !answers.is_empty() && answers.iter().all(structured) {
            return Metric::Json;
        }
        let mut labels: Vec<&str> = answers.clone();
        labels.sort_unstable();
        labels.dedup();
        let short = |l: &&str| {
            !l.is_empty() && l.split_whitespace().count() <= MAX_LABEL_WORDS && !l.contains(',')
        };
        let few = labels.len() <= MAX_LABELS && answers.len() >= 2 * labels.len();
        if labels.len() >= 2 && few && labels.iter().all(short) {
            return Metric::Choice(labels.into_iter().map(str::to_owned).collect());
        }
        Metric::Exact
    }

    /// Why an expected answer can never score under this metric (checked for every example
    /// before generating, so a mislabeled test file fails at once).
    pub fn check_expected(&self, expected: &str) -> Result<(), String> {
        let expected = expected.trim();
        match self {
            Metric::Json => serde_json::from_str::<serde_json::Value>(expected)
                .map(|_| ())
                .map_err(|e| format!("the expected answer is not JSON ({e})")),
            Metric::ToolCall if tool_calls(expected).is_none() => Err(
                "the expected answer is not a tool call: the last assistant message needs tool_calls".into(),
            ),
            Metric::Choice(labels) if !labels.iter().any(|l| l == expected) => Err(format!(
                "the expected answer {expected:?} is not one of the labels {}",
                labels.join(",")
            )),
            _ => Ok(()),
        }
    }
}

/// The `(name, arguments)` of the calls in a text: a JSON list of `{"name", "arguments"}`
/// objects or one such object (what a Mistral model writes after `[TOOL_CALLS]`, the control
/// token itself decoded away), or `<tool_call>{...}</tool_call>` blocks (Hermes-style Jinja
/// templates). Arguments given as JSON text are parsed, so both spellings compare as values.
pub fn tool_calls(text: &str) -> Option<Vec<(String, serde_json::Value)>> {
    use serde_json::Value;
    let items: Vec<Value> = if text.contains("<tool_call>") {
        let blocks: Vec<Value> = text
            .split("<tool_call>")
            .skip(1)
            .map(|block| serde_json::from_str(block.split("</tool_call>").next()?.trim()).ok())
            .collect::<Option<_>>()?;
        (!blocks.is_empty()).then_some(blocks)?
    } else {
        bora_tokenizer::chat::tool_call_items(text)?
    };
    items
        .into_iter()
        .map(|item| {
            let name = item.get("name")?.as_str()?.to_string();
            let arguments = match item.get("arguments")? {
                Value::String(s) => serde_json::from_str(s).ok()?,
                v => v.clone(),
            };
            Some((name, arguments))
        })
        .collect()
}

/// z for a two-sided 95% interval: the 0.975 quantile of the standard normal.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval for `correct` successes in `n` trials. Unlike the normal
/// approximation it stays inside [0, 1] and is not degenerate at 0% or 100%, which is where
/// base and tuned scores of a fine-tune often sit. `n = 0` gives the uninformative [0, 1].
pub fn wilson(correct: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = correct as f64 / n;
    let z2 = z * z;
    let center = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At 0% and 100% one end is exactly 0 or 1; rounding would otherwise leave 1 − 1e-16,
    // and an interval that excludes the observed score.
    let lo = if correct == 0 { 0.0 } else { center - half };
    let hi = if correct as f64 == n {
        1.0
    } else {
        center + half
    };
    (lo.max(0.0), hi.min(1.0))
}
