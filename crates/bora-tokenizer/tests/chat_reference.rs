//! Chat formatting compared id for id with the reference libraries, from the fixtures in
//! `tests/fixtures/chat/` (written by `scripts/make_chat_fixtures.py`): mistral-common's
//! `encode_chat_completion` for the Mistral tokenizers, transformers' `apply_chat_template` for
//! SmolLM2's ChatML; masks by mistral-finetune's rule as the script documents.

use std::path::Path;

use bora_formats::cache;
use bora_tokenizer::chat::{
    ChatError, ChatFormat, Conversation, InstructVersion, JinjaFormat, JsonValue,
};
use bora_tokenizer::Tokenizer;

fn fixture(name: &str) -> JsonValue {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    JsonValue::parse(&text).unwrap_or_else(|| panic!("{}: not JSON", path.display()))
}

fn field<'a>(v: &'a JsonValue, key: &str) -> &'a JsonValue {
    v.get(key)
        .unwrap_or_else(|| panic!("fixture lacks {key:?}"))
}

fn array(v: &JsonValue) -> &[JsonValue] {
    match v {
        JsonValue::Array(items) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

fn numbers(v: &JsonValue) -> Vec<u32> {
    array(v)
        .iter()
        .map(|x| match x {
            JsonValue::Int(i) => u32::try_from(*i).expect("id fits u32"),
            other => panic!("expected an integer, got {other:?}"),
        })
        .collect()
}

/// Runs every case of a fixture; all mismatches are reported at once. Returns how many cases
/// were encoded (rather than expected to fail).
fn check_fixture(tok: &Tokenizer, format: &ChatFormat, fx: &JsonValue) -> usize {
    let mut failures = Vec::new();
    let mut encoded = 0;
    for case in array(field(fx, "cases")) {
        let JsonValue::String(name) = field(case, "name") else {
            panic!("case name")
        };
        let conv = Conversation::from_value(field(case, "conversation"))
            .unwrap_or_else(|e| panic!("{name}: fixture conversation does not parse: {e}"));
        let prompt = field(case, "add_generation_prompt") == &JsonValue::Bool(true);
        let got = format.encode(tok, &conv, prompt);
        match (case.get("error"), got) {
            (Some(reference_error), Ok(got)) => failures.push(format!(
                "{name}: the reference rejects it ({reference_error:?}) but bora encoded {:?}",
                got.ids
            )),
            (Some(_), Err(_)) => {}
            (None, Err(e)) => failures.push(format!("{name}: bora failed: {e}")),
            (None, Ok(got)) => {
                encoded += 1;
                let want_ids = numbers(field(case, "ids"));
                let want_mask: Vec<bool> = numbers(field(case, "mask"))
                    .iter()
                    .map(|&m| m == 1)
                    .collect();
                if got.ids != want_ids {
                    failures.push(format!(
                        "{name}: ids\n  want {want_ids:?}\n  got  {:?}",
                        got.ids
                    ));
                } else if got.mask != want_mask {
                    failures.push(format!(
                        "{name}: mask\n  want {want_mask:?}\n  got  {:?}",
                        got.mask
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    encoded
}

fn check_mistral(file: &str, version: InstructVersion) {
    let tok = Tokenizer::from_file(&cache::fetched_tokenizer(file).unwrap()).unwrap();
    let format = ChatFormat::from_tokenizer(&tok).unwrap();
    match &format {
        ChatFormat::Mistral(f) => {
            assert_eq!(f.version(), version);
            assert_eq!(format.to_string(), format!("Mistral instruct {version:?}"));
        }
        other => panic!("{file}: expected a Mistral format, got {other:?}"),
    }
    let fx = fixture(&format!("mistral_{}.json", file.trim_end_matches(".json")));
    let encoded = check_fixture(&tok, &format, &fx);
    assert!(
        encoded >= 20,
        "{file}: only {encoded} conversations encoded"
    );
}

#[test]
fn mistral_v1_matches_mistral_common() {
    check_mistral("tokenizer.model.v1", InstructVersion::V1);
}

#[test]
fn mistral_v2_matches_mistral_common() {
    check_mistral(
        "mistral_instruct_tokenizer_240216.model.v2",
        InstructVersion::V2,
    );
}

#[test]
fn mistral_v3_matches_mistral_common() {
    check_mistral(
        "mistral_instruct_tokenizer_240323.model.v3",
        InstructVersion::V3,
    );
}

#[test]
fn mistral_v7_matches_mistral_common() {
    check_mistral(
        "mistral_instruct_tokenizer_241114.model.v7",
        InstructVersion::V7,
    );
}

#[test]
fn tekken_240718_matches_mistral_common() {
    check_mistral("tekken_240718.json", InstructVersion::V3);
}

#[test]
fn tekken_240911_matches_mistral_common() {
    check_mistral("tekken_240911.json", InstructVersion::V3);
}

#[test]
fn chatml_smollm2_matches_transformers() {
    let tok = Tokenizer::from_file(&cache::fetched_default_model().unwrap()).unwrap();
    let format = ChatFormat::from_tokenizer(&tok).unwrap();
    assert!(matches!(format, ChatFormat::Jinja(_)), "{format:?}");
    let encoded = check_fixture(&tok, &format, &fixture("chatml_smollm2.json"));
    assert!(encoded >= 10, "only {encoded} ChatML conversations");
}

/// A Hugging Face style template (tools, `tojson`, Python string methods, namespaces, loop
/// controls) rendered by transformers and tokenized by mistral-common's Tekken.
#[test]
fn jinja_template_matches_transformers() {
    let tok =
        Tokenizer::from_file(&cache::fetched_tokenizer("tekken_240911.json").unwrap()).unwrap();
    let fx = fixture("jinja_tekken_240911.json");
    let JsonValue::String(template) = field(&fx, "template") else {
        panic!("template")
    };
    let format = ChatFormat::Jinja(Box::new(JinjaFormat::new(&tok, template).unwrap()));
    let encoded = check_fixture(&tok, &format, &fx);
    assert!(encoded >= 20, "only {encoded} conversations");
}

fn parse_error(json: &str) -> ChatError {
    Conversation::from_json(json).expect_err(json)
}

#[test]
fn parse_errors_name_message_and_field() {
    let cases = [
        (
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"robot","content":"x"}]}"#,
            Some(1),
            "role",
        ),
        (r#"{"messages":[{"role":"user"}]}"#, Some(0), "content"),
        (
            r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b","weight":0.5}]}"#,
            Some(1),
            "weight",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":"x"}]}]}"#,
            Some(0),
            "content[0]",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","tool_calls":[{"id":"abcdefghi","function":{"name":"f","arguments":[1]}}]}]}"#,
            Some(1),
            "tool_calls[0].function.arguments",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a","weight":1}]}"#,
            Some(0),
            "weight",
        ),
        (
            r#"{"messages":[],"tools":[{"type":"function","function":{"name":"f","parameters":"x"}}]}"#,
            None,
            "tools[0].function.parameters",
        ),
        (r#"{"conversation":[]}"#, None, "messages"),
    ];
    for (json, want_index, want_field) in cases {
        match parse_error(json) {
            ChatError::Field { index, field, .. } => {
                assert_eq!((index, field.as_str()), (want_index, want_field), "{json}")
            }
            other => panic!("{json}: expected a field error, got {other}"),
        }
    }
    assert!(matches!(parse_error("{"), ChatError::Json(_)));
}

#[test]
fn validation_errors_name_the_message() {
    let path = cache::fetched_tokenizer("mistral_instruct_tokenizer_240323.model.v3").unwrap();
    let tok = Tokenizer::from_file(&path).unwrap();
    let format = ChatFormat::from_tokenizer(&tok).unwrap();
    let conv = Conversation::from_json(
        r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},
            {"role":"user","content":"c"},{"role":"tool","tool_call_id":"abcdefghi","content":"x"}]}"#,
    )
    .unwrap();
    match format.encode(&tok, &conv, true).unwrap_err() {
        ChatError::Field { index, field, .. } => {
            assert_eq!((index, field.as_str()), (Some(3), "role"))
        }
        other => panic!("expected a field error, got {other}"),
    }
    let done = Conversation::from_json(
        r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        format.encode(&tok, &done, true),
        Err(ChatError::GenerationPromptAfterAssistant)
    ));
}
