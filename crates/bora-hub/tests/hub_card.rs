//! The model card. The expected front matter is what `huggingface_hub`'s
//! `ModelCardData(...).to_yaml()` (PyYAML) writes for the same fields, printed with the
//! fixture venv's huggingface_hub, wrapped in the `---` lines `ModelCard` puts around it:
//!
//! ```python
//! from huggingface_hub import ModelCardData
//! ModelCardData(base_model=..., datasets=[...], library_name=..., license=...,
//!               pipeline_tag="text-generation", tags=[...]).to_yaml()
//! ```

use bora_hub::card::{front_matter, model_card, CardInput, RepoContents};

fn input() -> CardInput {
    CardInput {
        repo: "bora-ml/smol-json".into(),
        run_name: "demo".into(),
        base_model: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
        license: Some("apache-2.0".into()),
        datasets: vec!["bora-ml/json-extract".into()],
        contents: RepoContents {
            adapter: true,
            merged: None,
            gguf: vec!["gguf/smol-json-q8_0.gguf".into()],
        },
        config_toml: Some("name = \"demo\"\n[lora]\nrank = 8\n".into()),
        eval: Some(
            "Metric `json` on 200 held-out examples: the section `bora eval` writes.\n".into(),
        ),
        loss_chart: Some("eval/loss.svg".into()),
    }
}

#[test]
fn front_matter_matches_huggingface_hub() {
    assert_eq!(
        front_matter(&input()),
        "---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\ndatasets:\n- bora-ml/json-extract\nlibrary_name: peft\nlicense: apache-2.0\npipeline_tag: text-generation\ntags:\n- bora\n- lora\n- mistral\n- gguf\n---\n"
    );
    let merged = CardInput {
        base_model: None,
        license: Some("other".into()),
        datasets: vec!["yes".into(), "a: b".into()],
        contents: RepoContents {
            adapter: false,
            merged: Some("merged".into()),
            gguf: vec![],
        },
        ..input()
    };
    assert_eq!(
        front_matter(&merged),
        "---\ndatasets:\n- 'yes'\n- 'a: b'\nlibrary_name: transformers\nlicense: other\npipeline_tag: text-generation\ntags:\n- bora\n- lora\n- mistral\n---\n"
    );
    let gguf_only = CardInput {
        base_model: Some("mistralai/Mistral-7B-v0.3".into()),
        license: None,
        datasets: vec![],
        contents: RepoContents {
            adapter: false,
            merged: None,
            gguf: vec!["gguf/m.gguf".into()],
        },
        ..input()
    };
    assert_eq!(
        front_matter(&gguf_only),
        "---\nbase_model: mistralai/Mistral-7B-v0.3\npipeline_tag: text-generation\ntags:\n- bora\n- lora\n- mistral\n- gguf\n---\n"
    );
}

#[test]
fn the_card_shows_eval_chart_usage_and_config() {
    let card = model_card(&input());
    assert!(card.starts_with(&front_matter(&input())));
    assert!(card.contains(
        "## Evaluation\n\nMetric `json` on 200 held-out examples: the section `bora eval` writes.\n"
    ));
    assert!(card.contains("![Training and validation loss](eval/loss.svg)"));
    assert!(card.contains("model = PeftModel.from_pretrained(base, \"bora-ml/smol-json\")"));
    assert!(card
        .contains("AutoModelForCausalLM.from_pretrained(\"HuggingFaceTB/SmolLM2-135M-Instruct\")"));
    assert!(
        card.contains("llama-cli --hf-repo bora-ml/smol-json --hf-file gguf/smol-json-q8_0.gguf")
    );
    assert!(card.contains("printf 'FROM ./gguf/smol-json-q8_0.gguf\\n' > Modelfile"));
    assert!(card.contains("```toml\nname = \"demo\"\n[lora]\nrank = 8\n```\n"));
    assert!(!card.contains("subfolder"), "no merged model in this repo");
    assert!(card.contains(
        "This repo holds the PEFT adapter (repo root) and GGUF files for llama.cpp and Ollama (`gguf/`)."
    ));
    assert_eq!(
        card,
        model_card(&input()),
        "the same inputs give the same card"
    );
}
