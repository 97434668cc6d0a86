//! Mistral instruct formats as mistral-common 1.13 encodes them (`InstructTokenizerV1/V2/V3/V7`,
//! `InstructRequestNormalizer(V7)`, `MistralRequestValidator(V3/V5)`), with the training mask of
//! mistral-finetune's `tokenize_instruct`.
//!
//! The pipeline is the library's: validate the request, normalize it (merge neighbouring
//! messages of one role and weight, pull system prompts out for v1-v3, JSON-normalize tool
//! payloads), then encode message by message. Each message's tokens carry one mask value, so
//! the ids and the mask come from the same walk and cannot drift apart.

use super::conversation::{join_nonempty, Conversation, Message, Role, Tool, ToolCall};
use super::json::JsonValue;
use super::{ChatError, EncodedChat};
use crate::Tokenizer;

/// mistral-common's instruct tokenizer versions that bora encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum InstructVersion {
    /// `[INST]` as plain text; system prompt in the first user turn; no tools.
    V1,
    /// Control tokens; system prompt and tools before the last user turn; tool history before
    /// that turn is dropped.
    V2,
    /// V2 with call ids in tool calls and results, and the whole tool history kept.
    V3,
    /// System messages in place between `[SYSTEM_PROMPT]` tokens; raw tool results after
    /// `[TOOL_CONTENT]`; content and tool calls may share an assistant message.
    V7,
}

/// The control-token ids one version needs, looked up once.
#[derive(Clone, Debug)]
pub struct MistralFormat {
    version: InstructVersion,
    bos: u32,
    eos: u32,
    controls: Option<Controls>,
}

#[derive(Clone, Debug)]
struct Controls {
    inst: u32,
    end_inst: u32,
    tools: u32,
    end_tools: u32,
    results: u32,
    end_results: u32,
    calls: u32,
    /// `[SYSTEM_PROMPT]`, `[/SYSTEM_PROMPT]`, `[TOOL_CONTENT]`: v7 only.
    v7: Option<(u32, u32, u32)>,
}

fn control(tok: &Tokenizer, name: &str, version: InstructVersion) -> Result<u32, ChatError> {
    tok.token_id(name).ok_or_else(|| ChatError::MissingToken {
        token: name.into(),
        format: format!("Mistral instruct {version:?}"),
    })
}

impl MistralFormat {
    /// Resolves the control tokens of `version` in `tok`.
    pub fn new(tok: &Tokenizer, version: InstructVersion) -> Result<MistralFormat, ChatError> {
        let missing = |token: &str| ChatError::MissingToken {
            token: token.into(),
            format: format!("Mistral instruct {version:?}"),
        };
        let bos = tok.bos_id().ok_or_else(|| missing("<s> (BOS)"))?;
        let eos = tok.eos_id().ok_or_else(|| missing("</s> (EOS)"))?;
        let controls = if version == InstructVersion::V1 {
            None
        } else {
            let c = |name: &str| control(tok, name, version);
            Some(Controls {
                inst: c("[INST]")?,
                end_inst: c("[/INST]")?,
                tools: c("[AVAILABLE_TOOLS]")?,
                end_tools: c("[/AVAILABLE_TOOLS]")?,
                results: c("[TOOL_RESULTS]")?,
                end_results: c("[/TOOL_RESULTS]")?,
                calls: c("[TOOL_CALLS]")?,
                v7: if version >= InstructVersion::V7 {
                    Some((
                        c("[SYSTEM_PROMPT]")?,
                        c("[/SYSTEM_PROMPT]")?,
                        c("[TOOL_CONTENT]")?,
                    ))
                } else {
                    None
                },
            })
        };
        Ok(MistralFormat {
            version,
            bos,
            eos,
            controls,
        })
    }

    pub fn version(&self) -> InstructVersion {
        self.version
    }

    pub(crate) fn encode(
        &self,
        tok: &Tokenizer,
        conv: &Conversation,
        add_generation_prompt: bool,
    ) -> Result<EncodedChat, ChatError> {
        let messages = &conv.messages;
        let last = messages
            .last()
            .ok_or_else(|| structure("the conversation has no messages"))?;
        // mistral-common's `finetuning` validation mode applies to complete conversations, its
        // `test` mode to prompts (ending in a user/tool turn or an assistant prefix).
        let training = last.role == Role::Assistant && !last.prefix;
        if add_generation_prompt && training {
            return Err(ChatError::GenerationPromptAfterAssistant);
        }
        validate(self.version, conv, training)?;
        let request = normalize(self.version, conv)?;
        let mut out = EncodedChat {
            ids: vec![self.bos],
            mask: vec![false],
        };
        self.encode_request(tok, &request, &mut out)?;
        Ok(out)
    }

    fn encode_request(
        &self,
        tok: &Tokenizer,
        req: &Request<'_>,
        out: &mut EncodedChat,
    ) -> Result<(), ChatError> {
        let users: Vec<usize> = req
            .turns
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t, Turn::User(_)))
            .map(|(i, _)| i)
            .collect();
        let first_user = users.first().copied();
        let last_user = users.last().copied();
        if self.version == InstructVersion::V2 {
            check_v2_tool_results(&req.turns, last_user)?;
        }
        for (i, turn) in req.turns.iter().enumerate() {
            let before_last_user = last_user.is_some_and(|l| i < l);
            let (ids, trained) = match turn {
                Turn::User(text) => (
                    self.user(tok, req, text, Some(i) == first_user, Some(i) == last_user),
                    false,
                ),
                Turn::System(text) => {
                    let (open, close, _) = self.v7_controls();
                    (wrap(open, tok.encode(text), close), false)
                }
                Turn::Tool(result) => (self.tool(tok, result, before_last_user)?, false),
                Turn::Assistant(a) => (self.assistant(tok, a, before_last_user)?, a.trained),
            };
            out.mask.extend(std::iter::repeat_n(trained, ids.len()));
            out.ids.extend(ids);
        }
        Ok(())
    }

    fn controls(&self) -> &Controls {
        self.controls
            .as_ref()
            .expect("v2+ formats resolve their control tokens in new()")
    }

    fn v7_controls(&self) -> (u32, u32, u32) {
        self.controls()
            .v7
            .expect("system turns exist only in v7 requests")
    }

    fn user(
        &self,
        tok: &Tokenizer,
        req: &Request<'_>,
        text: &str,
        first: bool,
        last: bool,
    ) -> Vec<u32> {
        if self.version == InstructVersion::V1 {
            let content = match &req.system_prompt {
                Some(system) if first => format!("{system}\n\n{text}"),
                _ => text.to_owned(),
            };
            return tok.encode(&format!("[INST] {content} [/INST]"));
        }
        let c = self.controls();
        let mut ids = Vec::new();
        if last && !req.tools.is_empty() {
            let tools = JsonValue::Array(req.tools.iter().map(Tool::to_json).collect());
            ids.push(c.tools);
            ids.extend(tok.encode(&tools.to_python_json()));
            ids.push(c.end_tools);
        }
        ids.push(c.inst);
        match &req.system_prompt {
            Some(system) if last => ids.extend(tok.encode(&format!("{system}\n\n{text}"))),
            _ => ids.extend(tok.encode(text)),
        }
        ids.push(c.end_inst);
        ids
    }

    fn tool(
        &self,
        tok: &Tokenizer,
        result: &ToolResult,
        before_last_user: bool,
    ) -> Result<Vec<u32>, ChatError> {
        let c = match self.version {
            InstructVersion::V1 => return Err(no_tools_in_v1()),
            _ => self.controls(),
        };
        let body = match self.version {
            InstructVersion::V1 => unreachable!("rejected above"),
            // v2 shows the model only the tool results that answer the current user turn.
            InstructVersion::V2 if before_last_user => return Ok(Vec::new()),
            InstructVersion::V2 => {
                let name = result
                    .name
                    .clone()
                    .map_or(JsonValue::Null, JsonValue::String);
                let entry = JsonValue::Object(vec![
                    ("name".into(), name),
                    ("content".into(), parsed_payload(&result.content)),
                ]);
                tok.encode(&JsonValue::Array(vec![entry]).to_python_json())
            }
            InstructVersion::V3 => {
                let call_id = result
                    .call_id
                    .clone()
                    .ok_or_else(|| structure("a tool message has no tool_call_id"))?;
                let entry = JsonValue::Object(vec![
                    ("content".into(), parsed_payload(&result.content)),
                    ("call_id".into(), JsonValue::String(call_id)),
                ]);
                tok.encode(&entry.to_python_json())
            }
            InstructVersion::V7 => {
                let call_id = result
                    .call_id
                    .as_deref()
                    .ok_or_else(|| structure("a tool message has no tool_call_id"))?;
                let (_, _, tool_content) = self.v7_controls();
                let mut ids = tok.encode(call_id);
                ids.push(tool_content);
                ids.extend(tok.encode(&result.content));
                ids
            }
        };
        Ok(wrap(c.results, body, c.end_results))
    }

    fn assistant(
        &self,
        tok: &Tokenizer,
        a: &AssistantTurn,
        before_last_user: bool,
    ) -> Result<Vec<u32>, ChatError> {
        let has_content = !a.content.is_empty();
        let mut ids = Vec::new();
        match self.version {
            InstructVersion::V1 => {
                if !a.calls.is_empty() {
                    return Err(no_tools_in_v1());
                }
                if !has_content {
                    return Err(structure(
                        "an assistant message has neither content nor tool calls",
                    ));
                }
                ids = tok.encode(&a.content);
            }
            InstructVersion::V2 | InstructVersion::V3 => {
                if has_content && !a.calls.is_empty() {
                    return Err(structure(
                        "merged assistant messages mix content and tool calls, which tokenizer versions before v7 cannot encode",
                    ));
                }
                if !a.calls.is_empty() {
                    // v2 drops tool calls that precede the last user turn, EOS included.
                    if self.version == InstructVersion::V2 && before_last_user {
                        return Ok(Vec::new());
                    }
                    ids = self.tool_calls(tok, &a.calls);
                } else if has_content {
                    ids = tok.encode(a.content.trim_end_matches(' '));
                } else {
                    return Err(structure(
                        "an assistant message has neither content nor tool calls",
                    ));
                }
            }
            InstructVersion::V7 => {
                if !has_content && a.calls.is_empty() {
                    return Err(structure(
                        "an assistant message has neither content nor tool calls",
                    ));
                }
                if has_content {
                    ids = tok.encode(a.content.trim_end_matches(' '));
                }
                if !a.calls.is_empty() {
                    ids.extend(self.tool_calls(tok, &a.calls));
                }
            }
        }
        if !a.prefix {
            ids.push(self.eos);
        }
        Ok(ids)
    }

    /// `[TOOL_CALLS]` + the JSON list of `{"name", "arguments"(, "id")}`; v3+ writes the id
    /// unless it is mistral-common's placeholder `"null"`.
    fn tool_calls(&self, tok: &Tokenizer, calls: &[ToolCall]) -> Vec<u32> {
        let entries = calls
            .iter()
            .map(|call| {
                let mut entry = vec![
                    ("name".into(), JsonValue::String(call.name.clone())),
                    ("arguments".into(), arguments_value(&call.arguments)),
                ];
                if self.version >= InstructVersion::V3 {
                    if let Some(id) = call.id.as_deref().filter(|id| *id != NULL_ID) {
                        entry.push(("id".into(), JsonValue::String(id.into())));
                    }
                }
                JsonValue::Object(entry)
            })
            .collect();
        let mut ids = vec![self.controls().calls];
        ids.extend(tok.encode(&JsonValue::Array(entries).to_python_json()));
        ids
    }
}

const NULL_ID: &str = "null";

fn wrap(open: u32, body: Vec<u32>, close: u32) -> Vec<u32> {
    let mut ids = Vec::with_capacity(body.len() + 2);
    ids.push(open);
    ids.extend(body);
    ids.push(close);
    ids
}

fn structure(reason: impl Into<String>) -> ChatError {
    ChatError::Structure(reason.into())
}

fn no_tools_in_v1() -> ChatError {
    ChatError::Unsupported(
        "Mistral instruct v1 has no tool calling (tool calls or tool messages)".into(),
    )
}

/// What a tool payload becomes in the prompt JSON: mistral-common normalizes it to JSON text
/// (empty becomes `{}`) and parses it again, so valid JSON is embedded as a value and anything
/// else as a string.
fn parsed_payload(text: &str) -> JsonValue {
    if text.is_empty() {
        return JsonValue::Object(Vec::new());
    }
    JsonValue::parse(text).unwrap_or_else(|| JsonValue::String(text.to_owned()))
}

fn arguments_value(arguments: &JsonValue) -> JsonValue {
    match arguments {
        JsonValue::String(text) => parsed_payload(text),
        other => other.clone(),
    }
}

/// A request after mistral-common's normalizer.
struct Request<'a> {
    /// v1-v3: all system messages, joined by blank lines.
    system_prompt: Option<String>,
    tools: &'a [Tool],
    turns: Vec<Turn>,
}

enum Turn {
    User(String),
    /// v7 only: system messages stay where they are.
    System(String),
    Assistant(AssistantTurn),
    Tool(ToolResult),
}

struct AssistantTurn {
    content: String,
    calls: Vec<ToolCall>,
    prefix: bool,
    trained: bool,
}

struct ToolResult {
    content: String,
    call_id: Option<String>,
    name: Option<String>,
}

fn normalize<'a>(
    version: InstructVersion,
    conv: &'a Conversation,
) -> Result<Request<'a>, ChatError> {
    let v7 = version == InstructVersion::V7;
    let system_prompt = if v7 {
        None
    } else {
        let systems: Vec<String> = conv
            .messages
            .iter()
            .filter(|m| m.role == Role::System && m.has_content())
            .map(Message::text)
            .collect();
        Some(systems.join("\n\n")).filter(|joined| !joined.is_empty())
    };
    let mut turns = Vec::new();
    // Runs of one role and one weight merge (a missing weight is its own value).
    for run in conv
        .messages
        .chunk_by(|a, b| a.role == b.role && a.weight == b.weight)
    {
        match run[0].role {
            Role::User => {
                let texts: Vec<String> = run.iter().map(Message::text).collect();
                turns.push(Turn::User(join_nonempty(texts.iter().map(String::as_str))));
            }
            Role::System if v7 => turns.extend(run.iter().map(|m| Turn::System(m.text()))),
            Role::System => {}
            Role::Tool => turns.extend(run.iter().map(|m| {
                let text = m.text();
                Turn::Tool(ToolResult {
                    // v1-v3 re-serialize JSON results; v7 keeps the text as given.
                    content: if v7 { text } else { normalize_json_text(&text) },
                    call_id: m.tool_call_id.clone(),
                    name: m.name.clone(),
                })
            })),
            Role::Assistant => {
                let texts: Vec<String> = run.iter().map(Message::text).collect();
                turns.push(Turn::Assistant(AssistantTurn {
                    content: join_nonempty(texts.iter().map(String::as_str)),
                    calls: run
                        .iter()
                        .flat_map(|m| m.tool_calls.iter().cloned())
                        .collect(),
                    prefix: run.iter().any(|m| m.prefix),
                    trained: run[0].is_trained(),
                }));
            }
        }
    }
    let starts_with_user = matches!(turns.first(), Some(Turn::User(_)));
    if turns.is_empty() || (!v7 && !starts_with_user) {
        turns.insert(0, Turn::User(String::new()));
    }
    Ok(Request {
        system_prompt,
        tools: &conv.tools,
        turns,
    })
}

/// `InstructRequestNormalizer._normalize_json_content`: empty becomes `{}`, JSON is
/// re-serialized the Python way, anything else is kept.
fn normalize_json_text(text: &str) -> String {
    if text.is_empty() {
        return "{}".into();
    }
    JsonValue::parse(text).map_or_else(|| text.to_owned(), |v| v.to_python_json())
}

/// Tokenizer v2 can show one tool result per assistant turn after the last user message.
fn check_v2_tool_results(turns: &[Turn], last_user: Option<usize>) -> Result<(), ChatError> {
    let mut calling = false;
    let mut results = 0;
    for turn in &turns[last_user.unwrap_or(0)..] {
        match turn {
            Turn::Assistant(a) => {
                calling = !a.calls.is_empty();
                results = 0;
            }
            Turn::Tool(_) if calling => {
                results += 1;
                if results > 1 {
                    return Err(ChatError::Unsupported(
                        "Mistral instruct v2 cannot encode several tool results for one assistant turn".into(),
                    ));
                }
            }
            Turn::Tool(_) => {}
            _ => {
                calling = false;
                results = 0;
            }
        }
    }
    Ok(())
}

fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_call_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn at(index: usize, field: &str, reason: impl Into<String>) -> ChatError {
    ChatError::Field {
        index: Some(index),
        field: field.into(),
        reason: reason.into(),
    }
}

/// mistral-common's request validation for `version`, in `finetuning` mode when `training`
/// and `test` mode otherwise.
fn validate(
    version: InstructVersion,
    conv: &Conversation,
    training: bool,
) -> Result<(), ChatError> {
    let messages = &conv.messages;
    let n = messages.len();
    if n == 1 && !matches!(messages[0].role, Role::User | Role::System) {
        return Err(at(
            0,
            "role",
            "a conversation must start with a user or system message",
        ));
    }
    for (i, pair) in messages.windows(2).enumerate() {
        let (prev, cur) = (pair[0].role, pair[1].role);
        let allowed = match prev {
            Role::System => matches!(cur, Role::User | Role::Assistant | Role::System),
            Role::User => matches!(cur, Role::Assistant | Role::System | Role::User),
            Role::Assistant => matches!(cur, Role::Assistant | Role::User | Role::Tool),
            Role::Tool => matches!(cur, Role::Assistant | Role::Tool | Role::User),
        };
        if !allowed {
            return Err(at(
                i + 1,
                "role",
                format!(
                    "a {} message cannot follow a {} message",
                    cur.as_str(),
                    prev.as_str()
                ),
            ));
        }
    }
    // Every assistant tool call is answered by one tool message before the next assistant turn.
    let mut pending: i64 = 0;
    for (i, m) in messages.iter().enumerate().skip(1) {
        match m.role {
            Role::Tool => pending -= 1,
            Role::Assistant => {
                if pending != 0 {
                    return Err(at(
                        i,
                        "tool_calls",
                        "the previous tool calls and tool results do not pair up",
                    ));
                }
                pending = m.tool_calls.len() as i64;
            }
            _ => {}
        }
    }
    if training && pending < 0 {
        return Err(structure("there are more tool results than tool calls"));
    }
    let checks_ids = version >= InstructVersion::V3;
    for (i, m) in messages.iter().enumerate() {
        let last = i + 1 == n;
        match m.role {
            Role::Assistant => {
                let has_calls = !m.tool_calls.is_empty();
                if version < InstructVersion::V7 && m.has_content() == has_calls {
                    return Err(at(
                        i,
                        "content",
                        "an assistant message needs either content or tool_calls, not both",
                    ));
                }
                for (j, call) in m.tool_calls.iter().enumerate() {
                    if checks_ids {
                        let id = call.id.as_deref().unwrap_or(NULL_ID);
                        let field = format!("tool_calls[{j}].id");
                        if id == NULL_ID {
                            if !(training && last) {
                                return Err(at(i, &field, "a tool call id may be missing only on the final assistant message of a training conversation"));
                            }
                        } else if !is_call_id(id) {
                            return Err(at(
                                i,
                                &field,
                                format!("is {id:?}; it must be 9 characters a-z, A-Z, 0-9"),
                            ));
                        }
                    }
                    if !is_function_name(&call.name) {
                        return Err(at(
                            i,
                            &format!("tool_calls[{j}].function.name"),
                            format!(
                                "is {:?}; it must be 1-64 characters a-z, A-Z, 0-9, _ or -",
                                call.name
                            ),
                        ));
                    }
                }
                if m.prefix && !last {
                    return Err(at(
                        i,
                        "prefix",
                        "only the last message may be an assistant prefix",
                    ));
                }
            }
            Role::Tool => {
                if let Some(name) = &m.name {
                    if !is_function_name(name) {
                        return Err(at(
                            i,
                            "name",
                            format!(
                                "is {name:?}; it must be 1-64 characters a-z, A-Z, 0-9, _ or -"
                            ),
                        ));
                    }
                }
                if checks_ids {
                    match m.tool_call_id.as_deref() {
                        None => return Err(at(i, "tool_call_id", "is missing")),
                        Some(id) if !is_call_id(id) => {
                            return Err(at(
                                i,
                                "tool_call_id",
                                format!("is {id:?}; it must be 9 characters a-z, A-Z, 0-9"),
                            ))
                        }
                        Some(_) => {}
                    }
                }
            }
            Role::System | Role::User => {}
        }
    }
    for (k, tool) in conv.tools.iter().enumerate() {
        if !is_function_name(&tool.name) {
            return Err(ChatError::Field {
                index: None,
                field: format!("tools[{k}].function.name"),
                reason: format!(
                    "is {:?}; it must be 1-64 characters a-z, A-Z, 0-9, _ or -",
                    tool.name
                ),
            });
        }
    }
    Ok(())
}

/// The calls a Mistral model writes after `[TOOL_CALLS]` (the control token decoded away): a
/// JSON list of call objects, or one call object. `None` when the text is neither or the list
/// is empty. Serving turns the items into OpenAI `tool_calls`, evaluation compares them with
/// the expected calls; both read the text as this one function does.
pub fn tool_call_items(text: &str) -> Option<Vec<serde_json::Value>> {
    use serde_json::Value;
    let items = match serde_json::from_str(text.trim()).ok()? {
        Value::Array(items) => items,
        one @ Value::Object(_) => vec![one],
        _ => return None,
    };
    (!items.is_empty()).then_some(items)
}
