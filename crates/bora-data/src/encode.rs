//! Examples → token ids and loss mask, through the tokenizer's chat format.
//!
//! Every shape goes through `ChatFormat::encode` except plain text, so a prompt/completion pair
//! is trained in exactly the layout it is later served in.

use std::path::{Path, PathBuf};

use bora_tokenizer::chat::{
    ChatError, ChatFormat, Content, Conversation, EncodedChat, Message, Role,
};
use bora_tokenizer::Tokenizer;

use crate::error::{DataError, LineError};
use crate::read::{chat_field, line_byte_limit, read_jsonl_limited, Example};

/// A tokenizer and its chat format, built once per run.
pub struct Encoder<'a> {
    tok: &'a Tokenizer,
    /// `None` for a tokenizer with no chat format: `text` examples need none, and the others
    /// are refused line by line with `no_format`.
    format: Option<ChatFormat>,
    no_format: String,
    /// Lines [`load`] refuses before tokenizing: see [`line_byte_limit`].
    max_line_bytes: usize,
}

impl<'a> Encoder<'a> {
    /// Fails on a chat format that is broken (a template that does not compile), not on a
    /// missing one.
    pub fn new(tok: &'a Tokenizer) -> Result<Encoder<'a>, ChatError> {
        let (format, no_format) = match ChatFormat::from_tokenizer(tok) {
            Ok(f) => (Some(f), String::new()),
            Err(ChatError::NoFormat(why)) => (None, why),
            Err(e) => return Err(e),
        };
        Ok(Encoder {
            tok,
            format,
            no_format,
            max_line_bytes: usize::MAX,
        })
    }

    /// For examples that will be fitted to `seq_len` tokens: [`load`] then refuses lines far
    /// too long for that ([`line_byte_limit`]) early and cheaply, naming them, instead of
    /// tokenizing them for minutes only to cut them.
    pub fn for_seq_len(self, seq_len: usize) -> Self {
        Encoder {
            max_line_bytes: line_byte_limit(seq_len),
            ..self
        }
    }

    fn format(&self) -> Result<&ChatFormat, ChatError> {
        self.format
            .as_ref()
            .ok_or_else(|| ChatError::NoFormat(self.no_format.clone()))
    }

    /// Ids and mask of one example. `mask[i]` says whether token `i` is a training target.
    pub fn encode(&self, example: &Example) -> Result<EncodedChat, ChatError> {
        match example {
            Example::Chat(conv) => self.format()?.encode(self.tok, conv, false),
            Example::Completion { prompt, completion } => {
                let conv = Conversation {
                    messages: vec![
                        message(Role::User, prompt),
                        message(Role::Assistant, completion),
                    ],
                    tools: Vec::new(),
                };
                self.format()?.encode(self.tok, &conv, false)
            }
            Example::Text(text) => {
                // Plain text is a document: BOS opens it, EOS closes it, and the model learns
                // every token including the end.
                let mut ids: Vec<u32> = self.tok.bos_id().into_iter().collect();
                let mut mask = vec![false; ids.len()];
                let body = self.tok.encode(text);
                mask.extend(std::iter::repeat_n(true, body.len()));
                ids.extend(body);
                if let Some(eos) = self.tok.eos_id() {
                    ids.push(eos);
                    mask.push(true);
                }
                Ok(EncodedChat { ids, mask })
            }
        }
    }
}

fn message(role: Role, text: &str) -> Message {
    Message {
        role,
        content: Some(Content::Text(text.to_owned())),
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
        weight: None,
        prefix: false,
    }
}

/// One tokenized example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Line in the source file, for messages about this example.
    pub line: usize,
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

impl Sample {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens the loss is computed on.
    pub fn trained(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

/// A tokenized file and the bad lines left out of it.
#[derive(Debug)]
pub struct Dataset {
    pub path: PathBuf,
    pub samples: Vec<Sample>,
    /// Lines skipped under `skip_bad_lines` (empty otherwise).
    pub skipped: Vec<LineError>,
}

/// Reads, validates and tokenizes `path`. A line the chat format rejects (e.g. a tool call id
/// the Mistral format does not accept) is a bad line like a parse error. With bad lines the
/// result is [`DataError::BadLines`] unless `skip_bad_lines`.
pub fn load(path: &Path, encoder: &Encoder, skip_bad_lines: bool) -> Result<Dataset, DataError> {
    let read = read_jsonl_limited(path, encoder.max_line_bytes)?;
    let mut errors = read.errors;
    let mut samples = Vec::with_capacity(read.records.len());
    for record in &read.records {
        match encoder.encode(&record.example) {
            Ok(EncodedChat { ids, mask }) => samples.push(Sample {
                line: record.line,
                ids,
                mask,
            }),
            Err(e) => {
                let (field, what) = match (&record.example, chat_field(e)) {
                    (Example::Chat(_), field_what) => field_what,
                    // The format saw a conversation the user never wrote; name their field.
                    (Example::Completion { .. }, (_, what)) => ("prompt".into(), what),
                    (Example::Text(_), (_, what)) => ("text".into(), what),
                };
                errors.push(LineError {
                    file: path.to_path_buf(),
                    line: record.line,
                    field,
                    what,
                })
            }
        }
    }
    errors.sort_by_key(|e| e.line);
    if !errors.is_empty() && !skip_bad_lines {
        return Err(DataError::BadLines {
            path: path.to_path_buf(),
            errors,
        });
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        samples,
        skipped: errors,
    })
}

/// What to do with an example longer than the sequence length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep its first `seq_len` tokens.
    Truncate,
    Drop,
}

/// How [`fit`] changed a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FitReport {
    /// Examples longer than the sequence length.
    pub overlong: usize,
    /// Of those, shortened to `seq_len`.
    pub truncated: usize,
    /// Removed: over-long under `Overlong::Drop`, or left with no trained token by truncation
    /// (a prompt longer than the sequence teaches nothing).
    pub dropped: usize,
}

/// Makes every sample fit `seq_len` tokens.
pub fn fit(samples: Vec<Sample>, seq_len: usize, overlong: Overlong) -> (Vec<Sample>, FitReport) {
    let mut report = FitReport::default();
    let mut kept = Vec::with_capacity(samples.len());
    for mut s in samples {
        if s.len() > seq_len {
            report.overlong += 1;
            if overlong == Overlong::Drop {
                report.dropped += 1;
                continue;
            }
            s.ids.truncate(seq_len);
            s.mask.truncate(seq_len);
            // The first token is only ever an input, so a trained target needs index ≥ 1.
            if !s.mask.iter().skip(1).any(|&m| m) {
                report.dropped += 1;
                continue;
            }
            report.truncated += 1;
        }
        kept.push(s);
    }
    (kept, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mask: &[bool]) -> Sample {
        Sample {
            line: 1,
            ids: (0..mask.len() as u32).collect(),
            mask: mask.to_vec(),
        }
    }

    #[test]
    fn fit_truncates_drops_and_counts() {
        let samples = vec![
            sample(&[false, true, true]),
            sample(&[false, false, false, true, true]),
            sample(&[false, true, true, true, true]),
        ];
        let (kept, report) = fit(samples.clone(), 3, Overlong::Truncate);
        assert_eq!(
            report,
            FitReport {
                overlong: 2,
                truncated: 1,
                dropped: 1
            }
        );
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|s| s.len() <= 3 && s.mask.len() == s.len()));
        let (kept, report) = fit(samples, 3, Overlong::Drop);
        assert_eq!((kept.len(), report.dropped, report.truncated), (1, 2, 0));
    }
}
