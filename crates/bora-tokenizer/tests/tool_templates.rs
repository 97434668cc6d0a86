//! Jinja chat templates with tool use, against transformers' `apply_chat_template` with
//! `tools=` (fixture from `scripts/make_tool_template_fixtures.py`): tool definitions, assistant
//! tool calls and tool results render to the same text, and the template's call syntax is
//! recognised.

use std::path::Path;

use bora_tokenizer::chat::{ChatFormat, Conversation, JinjaFormat, JsonValue, ToolCallSyntax};
use bora_tokenizer::Tokenizer;
use serde_json::Value;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixtures().join("encode/hf_bytelevel")).unwrap()
}

#[test]
fn tools_calls_and_results_render_as_transformers_renders_them() {
    let chat = fixtures().join("chat");
    let text = std::fs::read_to_string(chat.join("hermes_tools.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    // Conversations are read keeping their key order, which the prompt shows.
    let JsonValue::Array(ordered) = JsonValue::parse(&text)
        .unwrap()
        .get("cases")
        .unwrap()
        .clone()
    else {
        panic!("cases is a list")
    };
    let template =
        std::fs::read_to_string(chat.join(fixture["template"].as_str().unwrap())).unwrap();
    let tok = tokenizer();
    let format = JinjaFormat::new(&tok, &template).unwrap();
    assert_eq!(format.tool_call_syntax(), Some(ToolCallSyntax::Hermes));
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for (i, case) in cases.iter().enumerate() {
        let conv = Conversation::from_value(ordered[i].get("conversation").unwrap()).unwrap();
        let prompt = case["add_generation_prompt"].as_bool().unwrap();
        let text = format.render_conversation(&conv, prompt).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "case {i}");
    }
}

#[test]
fn templates_without_tool_use_or_with_an_unknown_call_syntax_have_none() {
    let tok = tokenizer();
    let plain = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}";
    let format = JinjaFormat::new(&tok, plain).unwrap();
    assert!(!format.supports_tools());
    assert_eq!(format.tool_call_syntax(), None);
    // Reads `tools` but writes calls as bare JSON (Llama 3.1 style): not read back.
    let bare = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}";
    let format = JinjaFormat::new(&tok, bare).unwrap();
    assert!(format.supports_tools());
    assert_eq!(format.tool_call_syntax(), None);
    let mistral = "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}{% endif %}{% for m in messages %}{% if m.tool_calls %}[TOOL_CALLS]{% endif %}{% endfor %}";
    let format = ChatFormat::Jinja(Box::new(JinjaFormat::new(&tok, mistral).unwrap()));
    assert_eq!(format.tool_call_syntax(), Some(ToolCallSyntax::Mistral));
}
