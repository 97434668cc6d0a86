//! Hugging Face style Jinja chat templates (ChatML and friends), rendered with minijinja under
//! the settings `transformers`' `apply_chat_template` uses, then tokenized with control tokens
//! parsed out of the text.
//!
//! A template gives no token-to-message map, so the mask comes from rendering prefixes: the
//! assistant message `i` owns the tokens between the rendering of `messages[..i]` with a
//! generation prompt and the rendering of `messages[..=i]`. Within that span the tokens up to
//! and including the first EOS (`<|im_end|>` for ChatML) are trained; what a template writes
//! after it (ChatML's newline) belongs to the template, not to the answer.

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};

use super::conversation::{Conversation, Message, Tool};
use super::json::JsonValue;
use super::{ChatError, EncodedChat, ToolCallSyntax};
use crate::Tokenizer;

/// Instructions one render may execute: a chat template needs a few thousand per message, so
/// this is far above any real use, and a template that loops without end fails instead of
/// hanging.
const FUEL: u64 = 50_000_000;

/// A compiled chat template and the special-token strings it may refer to.
pub struct JinjaFormat {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    eos_id: Option<u32>,
    tool_calls: Option<ToolCallSyntax>,
}

impl std::fmt::Debug for JinjaFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaFormat")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn template_error(e: Error) -> ChatError {
    // minijinja's Display omits the cause chain; the detail names the failing construct.
    let mut msg = e.to_string();
    if let Some(detail) = e.detail() {
        if !msg.contains(detail) {
            msg = format!("{msg}: {detail}");
        }
    }
    ChatError::Template(msg)
}

impl JinjaFormat {
    /// Compiles `template` for `tok` (whose BOS/EOS strings the template may print).
    pub fn new(tok: &Tokenizer, template: &str) -> Result<JinjaFormat, ChatError> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks on, and loop controls.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        // Templates are written for Python Jinja: `.strip()`, `.startswith()`, `.items()`...
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned("chat", template.to_owned())
            .map_err(template_error)?;
        let token_text =
            |id: Option<u32>| id.and_then(|id| tok.id_to_piece(id)).unwrap_or_default();
        let reads_tools = env
            .get_template("chat")
            .is_ok_and(|t| t.undeclared_variables(false).contains("tools"));
        // A template shows how the model writes a call where it renders an assistant turn's
        // `tool_calls`: Hermes-style templates wrap each in `<tool_call>`, Mistral's write
        // `[TOOL_CALLS]`.
        let tool_calls = if !reads_tools {
            None
        } else if template.contains("<tool_call>") {
            Some(ToolCallSyntax::Hermes)
        } else if template.contains("[TOOL_CALLS]") {
            Some(ToolCallSyntax::Mistral)
        } else {
            None
        };
        Ok(JinjaFormat {
            env,
            bos_token: token_text(tok.bos_id()),
            eos_token: token_text(tok.eos_id()),
            eos_id: tok.eos_id(),
            tool_calls,
        })
    }

    /// Whether the template reads the `tools` variable: one that never does would drop the
    /// tool definitions from the prompt without a word.
    pub fn supports_tools(&self) -> bool {
        self.env
            .get_template("chat")
            .is_ok_and(|t| t.undeclared_variables(false).contains("tools"))
    }

    /// How the model this template is for writes tool calls, where the template reads
    /// `tools` and writes calls in a syntax bora reads back (`<tool_call>` or `[TOOL_CALLS]`).
    pub fn tool_call_syntax(&self) -> Option<ToolCallSyntax> {
        self.tool_calls
    }

    /// The text the template makes of `conv` (what [`JinjaFormat::encode`] tokenizes).
    pub fn render_conversation(
        &self,
        conv: &Conversation,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render(&conv.messages, &conv.tools, add_generation_prompt)
    }

    fn render(
        &self,
        messages: &[Message],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self.env.get_template("chat").map_err(template_error)?;
        let tools = if tools.is_empty() {
            Value::from(())
        } else {
            Value::from_serialize(tools.iter().map(Tool::to_json).collect::<Vec<_>>())
        };
        template
            .render(minijinja::context! {
                messages => Value::from_serialize(messages),
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(template_error)
    }

    pub(crate) fn encode(
        &self,
        tok: &Tokenizer,
        conv: &Conversation,
        add_generation_prompt: bool,
    ) -> Result<EncodedChat, ChatError> {
        let messages = &conv.messages;
        if messages.last().is_some_and(|m| m.prefix) {
            return Err(ChatError::Unsupported(
                "an assistant prefix (continuing the final message) with a Jinja chat template"
                    .into(),
            ));
        }
        let full = self.render(messages, &conv.tools, add_generation_prompt)?;
        let ids = tok.encode_with_special(&full);
        let mut mask = vec![false; ids.len()];
        for (i, message) in messages.iter().enumerate() {
            if !message.is_trained() {
                continue;
            }
            let end_text = self.render(&messages[..=i], &conv.tools, false)?;
            if !full.starts_with(&end_text) {
                return Err(not_prefix_stable(i + 1));
            }
            // The generation prompt is the template's own text ("<|im_start|>assistant\n"),
            // so the answer starts after it; a template whose prompt does not prefix the
            // answer gets the boundary of the previous message instead.
            let with_prompt = self.render(&messages[..i], &conv.tools, true)?;
            let start_text = if full.starts_with(&with_prompt) {
                with_prompt
            } else {
                let plain = self.render(&messages[..i], &conv.tools, false)?;
                if !full.starts_with(&plain) {
                    return Err(not_prefix_stable(i));
                }
                plain
            };
            let start = common_prefix(&tok.encode_with_special(&start_text), &ids);
            let end = common_prefix(&tok.encode_with_special(&end_text), &ids);
            for pos in start..end {
                mask[pos] = true;
                if Some(ids[pos]) == self.eos_id {
                    break;
                }
            }
        }
        Ok(EncodedChat { ids, mask })
    }
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=indent)`, not
/// minijinja's compact HTML-safe JSON, because tool schemas land in the prompt verbatim.
fn python_tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let text = serde_json::to_string(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let json = JsonValue::parse(&text).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value is not representable as JSON",
        )
    })?;
    Ok(Value::from(json.to_python_json_indented(indent)))
}

fn not_prefix_stable(n: usize) -> ChatError {
    ChatError::Template(format!(
        "rendering the first {n} messages does not give a prefix of the whole conversation \
         (the template moves text between turns), so tokens cannot be attributed to messages"
    ))
}

/// How many leading ids agree: BPE may merge across a text boundary, and a token that straddles
/// it then counts for the earlier message.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
