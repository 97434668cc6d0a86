//! Chat formatting: a conversation becomes token ids plus the loss mask a fine-tune trains on.
//!
//! Training, evaluation and serving all call [`ChatFormat::encode`], so a model is served with
//! exactly the prompt layout it was trained on. The format follows the tokenizer: Mistral
//! SentencePiece and Tekken files get mistral-common's instruct encoding ([`mistral`]); every
//! other vocabulary uses the Jinja chat template it ships with ([`jinja`]).
//!
//! The mask is mistral-finetune's rule for every format: assistant content and the token that
//! ends the assistant turn are trained (tool-call turns included); BOS, system, user and tool
//! tokens, and assistant messages with `"weight": 0`, are not. Two mistral-finetune switches
//! are deliberately not copied, because they would make training ids differ from the ids the
//! model is served with: its `only_last` (with tools present, only the final assistant message
//! is trained; say so per message with `"weight": 0`) and its removal of the call id from a
//! final tool call (give that call no `id` to get the same prompt).

mod conversation;
mod jinja;
mod json;
mod mistral;

pub use conversation::{Content, Conversation, Message, Role, Tool, ToolCall};
pub use jinja::JinjaFormat;
pub use json::JsonValue;
pub use mistral::{tool_call_items, InstructVersion, MistralFormat};

use crate::{Tokenizer, TokenizerKind};

/// Token ids of a formatted conversation and, per id, whether the loss trains on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedChat {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

/// Why a conversation could not be formatted.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("invalid conversation JSON: {0}")]
    Json(String),
    /// A field is missing or wrong; `index` is the message number (from 0) where the field
    /// belongs to a message.
    #[error("{}{field}: {reason}", index.map(|i| format!("message {i}: ")).unwrap_or_default())]
    Field {
        index: Option<usize>,
        field: String,
        reason: String,
    },
    /// The message sequence breaks the format's rules (order of roles, tool call pairing).
    #[error("invalid conversation: {0}")]
    Structure(String),
    /// The format cannot express something the conversation contains.
    #[error("unsupported by this chat format: {0}")]
    Unsupported(String),
    #[error("the tokenizer has no {token:?} token, which the {format} chat format needs")]
    MissingToken { token: String, format: String },
    #[error("no chat format for this tokenizer: {0}")]
    NoFormat(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("a generation prompt was asked for after a complete assistant turn; end the conversation with a user or tool message")]
    GenerationPromptAfterAssistant,
}

/// How a model writes the tool calls of an assistant turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolCallSyntax {
    /// The `[TOOL_CALLS]` control token, then a JSON list of `{"name", "arguments"}` objects
    /// (mistral-common's v2/v3/v7 format, and Mistral's own Jinja templates).
    Mistral,
    /// Each call a JSON object `{"name", "arguments"}` between `<tool_call>` and
    /// `</tool_call>` (the Hermes format of Qwen 2.5/3, Hermes 2/3 and SmolLM3 templates).
    Hermes,
}

impl ToolCallSyntax {
    /// The text that opens a call (Mistral's is a control token, decoded away in text).
    pub fn open_marker(self) -> &'static str {
        match self {
            ToolCallSyntax::Mistral => "[TOOL_CALLS]",
            ToolCallSyntax::Hermes => "<tool_call>",
        }
    }
}

/// How a tokenizer's model expects conversations to be laid out.
#[derive(Debug)]
pub enum ChatFormat {
    Mistral(MistralFormat),
    /// Boxed: a compiled template environment is several times larger than the Mistral ids.
    Jinja(Box<JinjaFormat>),
}

impl ChatFormat {
    /// The format mistral-common uses for this tokenizer file (instruct v1, v2, v3 or v7 by
    /// SentencePiece file version or Tekken `config.version`), else the tokenizer's own Jinja
    /// chat template.
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<ChatFormat, ChatError> {
        let kind = tok.kind();
        let mistral_version = if let TokenizerKind::SentencePiece { version } = &kind {
            Some(match version {
                1 => InstructVersion::V1,
                2 => InstructVersion::V2,
                3 => InstructVersion::V3,
                7 => InstructVersion::V7,
                other => return Err(unsupported_version(&format!("SentencePiece v{other}"))),
            })
        } else if let TokenizerKind::Tekken { version } = &kind {
            Some(match version.as_str() {
                "v3" => InstructVersion::V3,
                "v7" => InstructVersion::V7,
                other => return Err(unsupported_version(&format!("Tekken {other}"))),
            })
        } else {
            None
        };
        match mistral_version {
            Some(version) => Ok(ChatFormat::Mistral(MistralFormat::new(tok, version)?)),
            None => match tok.chat_template() {
                Some(template) => Ok(ChatFormat::Jinja(Box::new(JinjaFormat::new(
                    tok, template,
                )?))),
                None => Err(ChatError::NoFormat(
                    "it is not a Mistral tokenizer and carries no chat template".into(),
                )),
            },
        }
    }

    /// How this format's model writes tool calls; `None` for a template that does not
    /// define tool use or writes calls in a syntax bora does not read.
    pub fn tool_call_syntax(&self) -> Option<ToolCallSyntax> {
        match self {
            ChatFormat::Mistral(_) => Some(ToolCallSyntax::Mistral),
            ChatFormat::Jinja(j) => j.tool_call_syntax(),
        }
    }

    /// Formats `conv` into ids and a loss mask. With `add_generation_prompt` the ids end where
    /// the model starts writing the next assistant turn (the conversation must then end with a
    /// user or tool message).
    pub fn encode(
        &self,
        tok: &Tokenizer,
        conv: &Conversation,
        add_generation_prompt: bool,
    ) -> Result<EncodedChat, ChatError> {
        if conv.messages.is_empty() {
            return Err(ChatError::Structure(
                "the conversation has no messages".into(),
            ));
        }
        match self {
            ChatFormat::Mistral(f) => f.encode(tok, conv, add_generation_prompt),
            ChatFormat::Jinja(f) => f.encode(tok, conv, add_generation_prompt),
        }
    }
}

/// What `bora info` and logs call the format: "Mistral instruct V3", "Jinja chat template".
impl std::fmt::Display for ChatFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChatFormat::Mistral(m) => write!(f, "Mistral instruct {:?}", m.version()),
            ChatFormat::Jinja(_) => f.write_str("Jinja chat template"),
        }
    }
}

fn unsupported_version(what: &str) -> ChatError {
    ChatError::NoFormat(format!(
        "{what}: bora encodes Mistral instruct versions v1, v2, v3 and v7"
    ))
}
