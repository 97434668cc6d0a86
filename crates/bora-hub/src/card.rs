//! The model card: the repo's `README.md`, YAML front matter that the Hub indexes (base
//! model, library, license, datasets, task, tags) and Markdown that tells a visitor what the
//! fine-tune is, how much better than its base it scored, and how to run it. Built from
//! structured inputs only, so the same run always gives the same card.

use std::fmt::Write;

/// The file name the Hub renders as a repo's card.
pub const MODEL_CARD: &str = "README.md";

/// What a repo holds, which decides `library_name` and the usage snippets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoContents {
    /// A PEFT adapter at the repo root.
    pub adapter: bool,
    /// A merged HF model directory under this repo folder.
    pub merged: Option<String>,
    /// GGUF files, as repo paths.
    pub gguf: Vec<String>,
}

/// Everything a card is made from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CardInput {
    /// `ORG/NAME` of the repo the card describes.
    pub repo: String,
    pub run_name: String,
    /// Hub id of the base model; without one the card has no `base_model` key.
    pub base_model: Option<String>,
    pub license: Option<String>,
    /// Hub dataset ids.
    pub datasets: Vec<String>,
    pub contents: RepoContents,
    /// The run's resolved config (TOML), shown as trained.
    pub config_toml: Option<String>,
    /// The Evaluation section's Markdown, as `bora eval` writes it for cards (metric,
    /// decoding, score table).
    pub eval: Option<String>,
    /// Repo path of the loss chart (SVG), shown as an image.
    pub loss_chart: Option<String>,
}

/// Tags every bora repo carries; the Hub lists models by tag.
const TAGS: [&str; 3] = ["bora", "lora", "mistral"];

/// The YAML front matter between its `---` lines, keys in the order `huggingface_hub`'s
/// `ModelCardData.to_yaml` writes them.
pub fn front_matter(input: &CardInput) -> String {
    let mut y = String::from("---\n");
    if let Some(base) = &input.base_model {
        let _ = writeln!(y, "base_model: {}", yaml_scalar(base));
    }
    if !input.datasets.is_empty() {
        y.push_str("datasets:\n");
        for d in &input.datasets {
            let _ = writeln!(y, "- {}", yaml_scalar(d));
        }
    }
    let library = if input.contents.adapter {
        Some("peft")
    } else if input.contents.merged.is_some() {
        Some("transformers")
    } else {
        None
    };
    if let Some(lib) = library {
        let _ = writeln!(y, "library_name: {lib}");
    }
    if let Some(license) = &input.license {
        let _ = writeln!(y, "license: {}", yaml_scalar(license));
    }
    y.push_str("pipeline_tag: text-generation\ntags:\n");
    let mut tags: Vec<&str> = TAGS.to_vec();
    if !input.contents.gguf.is_empty() {
        tags.push("gguf");
    }
    for t in tags {
        let _ = writeln!(y, "- {t}");
    }
    y.push_str("---\n");
    y
}

/// A YAML scalar as PyYAML writes one: plain where that reads back as the same string,
/// single-quoted otherwise, double-quoted (JSON escapes are YAML escapes) when it holds a
/// character single quotes cannot carry.
fn yaml_scalar(s: &str) -> String {
    if s.chars().any(|c| c.is_control()) {
        return serde_json::Value::String(s.to_owned()).to_string();
    }
    let reserved = matches!(
        s.to_ascii_lowercase().as_str(),
        "" | "~" | "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    );
    let numeric = s.parse::<f64>().is_ok() || s.starts_with(['.', '+', '-']);
    let plain = !reserved
        && !numeric
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// The whole `README.md`.
pub fn model_card(input: &CardInput) -> String {
    let mut md = front_matter(input);
    let base = input.base_model.as_deref();
    let _ = writeln!(md, "\n# {}\n", input.repo);
    let _ = write!(
        md,
        "A LoRA fine-tune{} made with [bora](https://github.com/bora-ml/bora) (run `{}`).",
        base.map(|b| format!(" of [{b}](https://huggingface.co/{b})"))
            .unwrap_or_default(),
        input.run_name
    );
    let mut holds = Vec::new();
    if input.contents.adapter {
        holds.push("the PEFT adapter (repo root)".to_owned());
    }
    if let Some(dir) = &input.contents.merged {
        holds.push(format!("the merged model (`{dir}/`)"));
    }
    if !input.contents.gguf.is_empty() {
        holds.push("GGUF files for llama.cpp and Ollama (`gguf/`)".to_owned());
    }
    if let Some((last, rest)) = holds.split_last() {
        let list = if rest.is_empty() {
            last.clone()
        } else {
            format!("{} and {last}", rest.join(", "))
        };
        let _ = write!(md, " This repo holds {list}.");
    }
    md.push_str("\n\n");

    if let Some(eval) = &input.eval {
        md.push_str("## Evaluation\n\n");
        md.push_str(eval);
        md.push('\n');
    }
    if let Some(chart) = &input.loss_chart {
        let _ = writeln!(
            md,
            "## Training loss\n\n![Training and validation loss]({chart})\n"
        );
    }

    md.push_str("## How to use\n\n");
    let base_id = base.unwrap_or("BASE_MODEL_ID");
    if input.contents.adapter {
        let _ = writeln!(
            md,
            "The adapter, on its base model, with transformers and peft:\n\n```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\nbase = AutoModelForCausalLM.from_pretrained(\"{base_id}\")\ntokenizer = AutoTokenizer.from_pretrained(\"{base_id}\")\nmodel = PeftModel.from_pretrained(base, \"{repo}\")\n```\n",
            repo = input.repo
        );
    }
    if let Some(dir) = &input.contents.merged {
        let _ = writeln!(
            md,
            "The merged model, with transformers alone:\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\nmodel = AutoModelForCausalLM.from_pretrained(\"{repo}\", subfolder=\"{dir}\")\ntokenizer = AutoTokenizer.from_pretrained(\"{repo}\", subfolder=\"{dir}\")\n```\n",
            repo = input.repo
        );
    }
    for file in &input.contents.gguf {
        let name = file.rsplit('/').next().unwrap_or(file);
        let _ = writeln!(
            md,
            "`{file}` with llama.cpp and Ollama:\n\n```sh\nllama-cli --hf-repo {repo} --hf-file {file} -cnv\n\nhf download {repo} {file} --local-dir .\nprintf 'FROM ./{file}\\n' > Modelfile\nollama create {model} -f Modelfile && ollama run {model}\n```\n",
            repo = input.repo,
            model = name.trim_end_matches(".gguf").to_ascii_lowercase()
        );
    }

    if let Some(config) = &input.config_toml {
        let _ = writeln!(
            md,
            "## Training config\n\nThe run's resolved config:\n\n```toml\n{}\n```",
            config.trim_end()
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_quote_like_pyyaml() {
        assert_eq!(yaml_scalar("org/model-1.5"), "org/model-1.5");
        assert_eq!(yaml_scalar("yes"), "'yes'");
        assert_eq!(yaml_scalar("1.0"), "'1.0'");
        assert_eq!(yaml_scalar("a: b"), "'a: b'");
        assert_eq!(yaml_scalar("it's"), "'it''s'");
        assert_eq!(yaml_scalar("two\nlines"), "\"two\\nlines\"");
    }
}
