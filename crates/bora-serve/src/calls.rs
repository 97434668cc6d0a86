//! Reading a choice's tool calls as its text arrives, so that a stream can send each call's
//! `function.arguments` in pieces as OpenAI does: a first delta with the id and name, then
//! fragments of the arguments' JSON text as the model writes them.
//!
//! The calls region starts at the syntax's marker (`[TOOL_CALLS]` for Mistral, a control token
//! seen as a token event; `<tool_call>` for Hermes templates, found in the text) and runs to
//! the end of the answer. In it every top-level JSON object is one call,
//! `{"name": ..., "arguments": ...}`; what stands between objects (`[`, `,`, `]`,
//! `</tool_call>`, `<tool_call>`, whitespace) is skipped. A whole response and a stream read
//! the text through this one reader, so joining a stream's deltas gives the whole response.

use bora_tokenizer::chat::ToolCallSyntax;

/// What a choice's text turned out to be, in the order it is sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    Content(String),
    /// A call begins (its index among the choice's calls).
    Start {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a call's arguments JSON text.
    Arguments {
        index: usize,
        text: String,
    },
}

/// A call as read so far.
#[derive(Debug, Default)]
struct Call {
    name: Option<String>,
    /// An id the model wrote itself (Mistral's format puts one after the arguments).
    model_id: Option<String>,
    arguments: String,
    /// Whether `arguments` is JSON text that can be sent as it grows: an object or list
    /// value as written, or a string value once it is complete and decoded.
    streamable: bool,
    /// The call's index among the choice's calls, once it has started.
    index: Option<usize>,
    /// Bytes of `arguments` already handed out.
    sent: usize,
}

/// Which top-level member of a call object a value belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Member {
    Name,
    Arguments,
    Id,
    Other,
}

/// Where the scanner is at the top level of a call object.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Top {
    Key,
    InKey,
    Colon,
    Value,
    /// Inside or after a value: `,` or `}` ends it.
    InValue,
}

/// Splits one choice's text into content and calls; see the module documentation.
pub(crate) struct CallReader {
    syntax: Option<ToolCallSyntax>,
    /// Content held back because it may be the start of the Hermes marker.
    held: String,
    in_calls: bool,
    /// The calls region as written, returned as content when it holds no call.
    region: String,
    calls: Vec<Call>,
    started: usize,
    /// Nesting inside the current call object (0: between calls).
    depth: u32,
    in_string: bool,
    escaped: bool,
    top: Top,
    key: String,
    member: Member,
    value: String,
}

impl CallReader {
    /// A reader for `syntax` (`None`: all text is content).
    pub fn new(syntax: Option<ToolCallSyntax>) -> CallReader {
        CallReader {
            syntax,
            held: String::new(),
            in_calls: false,
            region: String::new(),
            calls: Vec::new(),
            started: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            top: Top::Key,
            key: String::new(),
            member: Member::Other,
            value: String::new(),
        }
    }

    /// The model wrote the syntax's marker as a control token (absent from the text).
    pub fn marker_token(&mut self, out: &mut Vec<Piece>) {
        if self.syntax.is_some() && !self.in_calls {
            self.flush_held(out);
            self.in_calls = true;
        }
    }

    /// Takes the next piece of text; `fresh_id` names each call as it starts.
    pub fn text(&mut self, text: &str, fresh_id: &mut dyn FnMut() -> String, out: &mut Vec<Piece>) {
        if self.in_calls {
            self.scan(text, fresh_id, out);
            return;
        }
        let Some(ToolCallSyntax::Hermes) = self.syntax else {
            push_content(out, text);
            return;
        };
        self.held.push_str(text);
        let marker = ToolCallSyntax::Hermes.open_marker();
        if let Some(at) = self.held.find(marker) {
            let rest = self.held.split_off(at);
            self.flush_held(out);
            self.in_calls = true;
            self.scan(&rest, fresh_id, out);
            return;
        }
        // Keep back the longest tail that could still grow into the marker.
        let n = self.held.len();
        let keep = (1..marker.len().min(n + 1))
            .rev()
            .find(|&k| self.held.is_char_boundary(n - k) && marker.starts_with(&self.held[n - k..]))
            .unwrap_or(0);
        let tail = self.held.split_off(n - keep);
        self.flush_held(out);
        self.held = tail;
    }

    /// The answer ended: held text goes out, and a calls region in which no call started is
    /// content after all, as the model wrote it.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        self.flush_held(out);
        if self.in_calls && self.started == 0 {
            let region = std::mem::take(&mut self.region);
            push_content(out, &region);
            self.in_calls = false;
        }
    }

    /// Whether at least one call started.
    pub fn has_calls(&self) -> bool {
        self.started > 0
    }

    /// The id the model wrote itself for each started call, in call order: a whole response
    /// keeps them (as mistral-common's decoder does); a stream has sent its own by then.
    pub fn model_ids(&self) -> Vec<Option<String>> {
        self.calls
            .iter()
            .filter(|c| c.index.is_some())
            .map(|c| c.model_id.clone())
            .collect()
    }

    fn flush_held(&mut self, out: &mut Vec<Piece>) {
        let held = std::mem::take(&mut self.held);
        push_content(out, &held);
    }

    fn scan(&mut self, text: &str, fresh_id: &mut dyn FnMut() -> String, out: &mut Vec<Piece>) {
        self.region.push_str(text);
        for c in text.chars() {
            self.char(c);
        }
        for call in &mut self.calls {
            let Some(name) = &call.name else { continue };
            let index = match call.index {
                Some(i) => i,
                None => {
                    let i = self.started;
                    self.started += 1;
                    call.index = Some(i);
                    out.push(Piece::Start {
                        index: i,
                        id: fresh_id(),
                        name: name.clone(),
                    });
                    i
                }
            };
            if call.streamable && call.arguments.len() > call.sent {
                out.push(Piece::Arguments {
                    index,
                    text: call.arguments[call.sent..].to_string(),
                });
                call.sent = call.arguments.len();
            }
        }
    }

    fn char(&mut self, c: char) {
        if self.depth == 0 {
            if c == '{' {
                self.calls.push(Call::default());
                self.depth = 1;
                self.top = Top::Key;
            }
            return;
        }
        let call = self.calls.last_mut().expect("a call is open at depth > 0");
        let in_value = self.top == Top::InValue;
        let raw_arguments = in_value && self.member == Member::Arguments && call.streamable;
        if self.in_string {
            if in_value {
                self.value.push(c);
                if raw_arguments {
                    call.arguments.push(c);
                }
            }
            if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = false;
                if self.top == Top::InKey {
                    self.top = Top::Colon;
                }
            } else if self.top == Top::InKey {
                self.key.push(c);
            }
            return;
        }
        if self.depth > 1 {
            self.value.push(c);
            if raw_arguments {
                call.arguments.push(c);
            }
            match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => self.depth -= 1,
                _ => {}
            }
            return;
        }
        match (self.top, c) {
            (Top::Key, '"') => {
                self.in_string = true;
                self.key.clear();
                self.top = Top::InKey;
            }
            (Top::Key, '}') => self.close_call(),
            (Top::Colon, ':') => self.top = Top::Value,
            (Top::Value, c) if !c.is_whitespace() => self.start_value(c),
            (Top::InValue, ',') => {
                self.end_value();
                self.top = Top::Key;
            }
            (Top::InValue, '}') => {
                self.end_value();
                self.close_call();
            }
            (Top::InValue, c) if !c.is_whitespace() => self.value.push(c),
            _ => {}
        }
    }

    fn start_value(&mut self, first: char) {
        self.member = match self.key.as_str() {
            "name" => Member::Name,
            // Llama-style templates name the arguments `parameters`.
            "arguments" | "parameters" => Member::Arguments,
            "id" => Member::Id,
            _ => Member::Other,
        };
        self.value.clear();
        self.value.push(first);
        self.top = Top::InValue;
        match first {
            '"' => self.in_string = true,
            '{' | '[' => self.depth += 1,
            _ => {}
        }
        if self.member == Member::Arguments {
            let call = self.calls.last_mut().expect("a call is open");
            call.streamable = first == '{' || first == '[';
            call.arguments.clear();
            if call.streamable {
                call.arguments.push(first);
            }
        }
    }

    fn end_value(&mut self) {
        let call = self.calls.last_mut().expect("a call is open");
        let text = self.value.as_str();
        match self.member {
            Member::Name => call.name = serde_json::from_str::<String>(text).ok(),
            Member::Id => call.model_id = serde_json::from_str::<String>(text).ok(),
            Member::Arguments if !call.streamable => {
                // A string holding the JSON text (OpenAI's own shape), or null.
                call.arguments = match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(serde_json::Value::String(s)) => s,
                    _ => "{}".into(),
                };
                call.streamable = true;
            }
            _ => {}
        }
        self.member = Member::Other;
    }

    fn close_call(&mut self) {
        self.depth = 0;
        let call = self.calls.last_mut().expect("the call being closed");
        if !call.streamable {
            call.arguments = "{}".into();
            call.streamable = true;
        }
    }
}

fn push_content(out: &mut Vec<Piece>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Content(last)) = out.last_mut() {
        last.push_str(text);
    } else {
        out.push(Piece::Content(text.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Content and calls `(name, arguments)` after feeding `chunks`, and the pieces.
    fn read(
        syntax: ToolCallSyntax,
        marker_token: bool,
        chunks: &[&str],
    ) -> (String, Vec<(String, String)>, Vec<Piece>) {
        let mut reader = CallReader::new(Some(syntax));
        let mut pieces = Vec::new();
        let mut n = 0;
        let mut fresh = || {
            n += 1;
            format!("id{n}")
        };
        if marker_token {
            reader.marker_token(&mut pieces);
        }
        for c in chunks {
            reader.text(c, &mut fresh, &mut pieces);
        }
        reader.finish(&mut pieces);
        let (mut content, mut calls) = (String::new(), Vec::new());
        for p in &pieces {
            match p {
                Piece::Content(t) => content.push_str(t),
                Piece::Start { index, name, .. } => {
                    assert_eq!(*index, calls.len());
                    calls.push((name.clone(), String::new()));
                }
                Piece::Arguments { index, text } => calls[*index].1.push_str(text),
            }
        }
        (content, calls, pieces)
    }

    fn chars(text: &str) -> Vec<String> {
        text.chars().map(String::from).collect()
    }

    #[test]
    fn hermes_calls_stream_their_arguments_in_pieces_and_join_to_the_whole() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa}ris\\\"\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>";
        let want = vec![
            (
                "get_weather".to_string(),
                r#"{"city": "Pa}ris\"", "days": [1, 2]}"#.to_string(),
            ),
            ("add".to_string(), "{}".to_string()),
        ];
        let (content, calls, _) = read(ToolCallSyntax::Hermes, false, &[text]);
        assert_eq!((content.as_str(), &calls), ("Let me check.\n", &want));
        let one_by_one = chars(text);
        let refs: Vec<&str> = one_by_one.iter().map(String::as_str).collect();
        let (content, calls, pieces) = read(ToolCallSyntax::Hermes, false, &refs);
        assert_eq!((content.as_str(), &calls), ("Let me check.\n", &want));
        let fragments = pieces
            .iter()
            .filter(|p| matches!(p, Piece::Arguments { index: 0, .. }))
            .count();
        assert!(fragments > 10, "{pieces:?}");
        let first_call = pieces
            .iter()
            .position(|p| matches!(p, Piece::Start { .. }))
            .unwrap();
        let first_fragment = pieces
            .iter()
            .position(|p| matches!(p, Piece::Arguments { .. }))
            .unwrap();
        assert!(first_call < first_fragment);
    }

    #[test]
    fn mistral_lists_keep_the_models_id_and_wait_for_a_late_name() {
        let text = r#"[{"arguments": {"x": [1, {"y": "]}"}]}, "name": "f", "id": "abcDEF123"}, {"name": "g", "arguments": "{\"a\": 1}"}]"#;
        for split in [vec![text.to_string()], chars(text)] {
            let refs: Vec<&str> = split.iter().map(String::as_str).collect();
            let mut reader = CallReader::new(Some(ToolCallSyntax::Mistral));
            let mut pieces = Vec::new();
            reader.marker_token(&mut pieces);
            for c in &refs {
                reader.text(c, &mut || "fresh".into(), &mut pieces);
            }
            reader.finish(&mut pieces);
            assert_eq!(
                reader.model_ids(),
                vec![Some("abcDEF123".to_string()), None]
            );
            let (content, calls, _) = read(ToolCallSyntax::Mistral, true, &refs);
            assert_eq!(content, "");
            assert_eq!(
                calls,
                vec![
                    ("f".to_string(), r#"{"x": [1, {"y": "]}"}]}"#.to_string()),
                    ("g".to_string(), r#"{"a": 1}"#.to_string()),
                ]
            );
        }
    }

    #[test]
    fn text_without_a_readable_call_stays_content() {
        let (content, calls, _) = read(ToolCallSyntax::Hermes, false, &["a <tool", "box> b"]);
        assert_eq!((content.as_str(), calls.len()), ("a <toolbox> b", 0));
        let (content, calls, _) = read(
            ToolCallSyntax::Hermes,
            false,
            &["x<tool_call>", "oops {\"a\": 1}"],
        );
        assert_eq!(
            (content.as_str(), calls.len()),
            ("x<tool_call>oops {\"a\": 1}", 0)
        );
        let (content, calls, _) = read(ToolCallSyntax::Mistral, true, &["not json"]);
        assert_eq!((content.as_str(), calls.len()), ("not json", 0));
        let (content, calls, _) = read(ToolCallSyntax::Hermes, false, &["plain 日本 <"]);
        assert_eq!((content.as_str(), calls.len()), ("plain 日本 <", 0));
    }

    #[test]
    fn a_call_cut_short_keeps_what_was_written() {
        let (_, calls, _) = read(
            ToolCallSyntax::Hermes,
            false,
            &["<tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"ab"],
        );
        assert_eq!(calls, vec![("f".to_string(), r#"{"q": "ab"#.to_string())]);
    }
}
