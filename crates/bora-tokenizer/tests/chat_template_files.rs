//! Model directories as current transformers saves them: the chat template in
//! `chat_template.jinja` (or `chat_template.json`, as processors save it) instead of
//! `tokenizer_config.json`.

use std::path::Path;

use bora_tokenizer::chat::ChatFormat;
use bora_tokenizer::Tokenizer;
use serde_json::{json, Value};

const JINJA: &str = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}";

#[test]
fn the_template_comes_from_the_config_else_the_jinja_file_else_the_json_file() {
    let dir = tempfile::tempdir().unwrap();
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encode/hf_bytelevel");
    std::fs::copy(hf.join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(hf.join("tokenizer_config.json")).unwrap()).unwrap();
    // A list of named templates, of which "default" is used.
    let listed = config["chat_template"].clone();
    let in_config = listed[0]["template"].as_str().unwrap().to_owned();
    config.as_object_mut().unwrap().remove("chat_template");
    let write_config = |c: &Value| {
        std::fs::write(dir.path().join("tokenizer_config.json"), c.to_string()).unwrap()
    };
    write_config(&config);
    let template = || {
        Tokenizer::from_file(dir.path())
            .unwrap()
            .chat_template()
            .map(str::to_owned)
    };
    assert_eq!(template(), None);
    let tok = Tokenizer::from_file(dir.path()).unwrap();
    assert!(ChatFormat::from_tokenizer(&tok).is_err());

    std::fs::write(
        dir.path().join("chat_template.json"),
        json!({"chat_template": "{{ 'json' }}"}).to_string(),
    )
    .unwrap();
    assert_eq!(template().as_deref(), Some("{{ 'json' }}"));

    std::fs::write(dir.path().join("chat_template.jinja"), JINJA).unwrap();
    assert_eq!(template().as_deref(), Some(JINJA));
    let tok = Tokenizer::from_file(dir.path()).unwrap();
    assert!(matches!(
        ChatFormat::from_tokenizer(&tok).unwrap(),
        ChatFormat::Jinja(_)
    ));

    config["chat_template"] = listed;
    write_config(&config);
    assert_eq!(template(), Some(in_config));

    config.as_object_mut().unwrap().remove("chat_template");
    write_config(&config);
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    std::fs::write(dir.path().join("chat_template.json"), "{\"template\": 1}").unwrap();
    let e = Tokenizer::from_file(dir.path()).err().unwrap().to_string();
    assert!(e.contains("chat_template.json"), "{e}");
}
