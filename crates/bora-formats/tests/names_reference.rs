//! Name maps and the q/k row permutation against gguf-py's tensor map, peft's adapter keys
//! and transformers' GGUF loader (`scripts/make_format_fixtures.py`).

use std::path::PathBuf;

use bora_formats::cache;
use bora_formats::gguf::GgufFile;
use bora_formats::names::{
    convert_name, permute_rows_half_to_interleaved, permute_rows_interleaved_to_half, LoraName,
    LoraPart, Scheme, TensorName,
};
use bora_formats::quant::dequantize;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

#[test]
fn names_agree_with_gguf_py_in_every_direction() {
    let names = fixture("names.json");
    for t in names["tensors"].as_array().unwrap() {
        let (hf, gguf, cons) = (s(&t["hf"]), s(&t["gguf"]), s(&t["consolidated"]));
        assert_eq!(
            s(&t["gguf_from_consolidated"]),
            gguf,
            "gguf-py maps both spellings alike"
        );
        for (from, fs) in [
            (hf, Scheme::Hf),
            (cons, Scheme::Consolidated),
            (gguf, Scheme::Gguf),
        ] {
            for (to, ts) in [
                (hf, Scheme::Hf),
                (cons, Scheme::Consolidated),
                (gguf, Scheme::Gguf),
            ] {
                assert_eq!(
                    convert_name(from, fs, ts).as_deref(),
                    Some(to),
                    "{from} -> {ts:?}"
                );
            }
        }
    }
}

#[test]
fn peft_adapter_keys_match_peft() {
    let names = fixture("names.json");
    let peft: Vec<&str> = names["peft"].as_array().unwrap().iter().map(s).collect();
    let mut ours = Vec::new();
    for t in names["tensors"].as_array().unwrap() {
        let base = TensorName::parse(s(&t["hf"]), Scheme::Hf).unwrap();
        let is_linear = base.layer().is_some() && !s(&t["hf"]).contains("layernorm");
        if is_linear {
            for part in [LoraPart::A, LoraPart::B] {
                ours.push(LoraName { base, part }.format(Scheme::Hf));
            }
        }
    }
    ours.sort();
    assert_eq!(ours, peft);
    for key in peft {
        let l = LoraName::parse(key, Scheme::Hf).unwrap();
        let cons = l.format(Scheme::Consolidated);
        assert!(
            cons.starts_with("layers.") && cons.contains(".lora_"),
            "{cons}"
        );
        assert_eq!(LoraName::parse(&cons, Scheme::Consolidated), Some(l));
        let g = l.format(Scheme::Gguf);
        assert_eq!(
            g,
            format!(
                "{}.lora_{}",
                l.base.format(Scheme::Gguf),
                if l.part == LoraPart::A { "a" } else { "b" }
            )
        );
    }
}

#[test]
fn row_permutation_matches_transformers_gguf_loader() {
    let names = fixture("names.json");
    for case in names["rope"].as_array().unwrap() {
        let n_heads = case["n_heads"].as_u64().unwrap() as usize;
        let from: Vec<u32> = case["hf_rows_from"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // Each 4-byte row holds its own index, so the output says where every row came from.
        let rows: Vec<u8> = (0..from.len() as u32).flat_map(u32::to_le_bytes).collect();
        let hf = permute_rows_interleaved_to_half(&rows, 4, n_heads).unwrap();
        let got: Vec<u32> = hf
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, from, "{n_heads} heads");
        assert_eq!(
            permute_rows_half_to_interleaved(&hf, 4, n_heads).unwrap(),
            rows
        );
    }
}

#[test]
fn quantized_rows_permute_like_transformers_dense_rows() {
    let want = fixture("smollm2_attn_k_hf_rows.json");
    let path = cache::fetched_default_model().unwrap();
    let file = GgufFile::open(path).unwrap();
    let k = file.require_tensor("blk.0.attn_k.weight").unwrap();
    let row_len = k.row_len() as usize;
    let row_bytes = k.ty.row_bytes(row_len).unwrap();
    let n_kv = want["n_kv_heads"].as_u64().unwrap() as usize;
    let hf =
        permute_rows_interleaved_to_half(file.tensor_bytes(k).unwrap(), row_bytes, n_kv).unwrap();
    for (r, vals) in want["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["values"].as_array().unwrap())
    {
        let r = r.as_u64().unwrap() as usize;
        let mut got = vec![0f32; row_len];
        dequantize(k.ty, &hf[r * row_bytes..][..row_bytes], &mut got).unwrap();
        let vals: Vec<f32> = vals
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, vals, "row {r}");
    }
}
