//! GGUF exports (`bora_model::export::gguf`): the merged model in every supported dtype and
//! the llama.cpp LoRA adapter, each reloaded by bora and checked against the in-memory model;
//! and, on the default model, against llama.cpp itself (llama-cpp-python's greedy tokens for
//! the same seeded adapter, recorded by `scripts/make_gguf_export_fixtures.py`).
//!
//! The adapters are random with a large B, so they change the model's outputs visibly (a
//! zero-B adapter, PEFT's init, would pass every check as a no-op).

use std::path::{Path, PathBuf};

use bora_formats::cache;
use bora_formats::gguf::GgufFile;
use bora_formats::names::{permute_rows_half_to_interleaved, LoraName, Scheme};
use bora_formats::quant::GgmlType;
use bora_model::export::gguf::{write_gguf, write_gguf_lora};
use bora_model::{argmax, LoadOptions, Logits, Lora, LoraSpec, LoraTarget, Model, Rng, Workspace};
use serde_json::Value;

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

fn fixture_json() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/export_gguf/llama_cpp.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A deterministic adapter: A uniform in ±1/√in (PEFT's Kaiming bound), B uniform in
/// ±`b_scale`, both from one SplitMix64 stream in `Lora::tensors` order. The fixture script
/// records the seed, rank and scale, so the adapter llama.cpp ran is rebuilt here exactly.
fn seeded_lora(model: &Model, rank: usize, alpha: f64, b_scale: f64, seed: u64) -> Lora {
    let spec = LoraSpec {
        rank,
        alpha,
        dropout: 0.0,
        rslora: false,
        targets: LoraTarget::ALL.to_vec(),
    };
    let mut lora = Lora::zeros(&model.config, &spec);
    let mut rng = Rng::new(seed);
    for (name, shape, data) in lora.tensors_mut() {
        let bound = if name.ends_with("lora_A.weight") {
            1.0 / (shape[1] as f64).sqrt()
        } else {
            b_scale
        };
        for x in data.iter_mut() {
            *x = ((rng.next_f64() * 2.0 - 1.0) * bound) as f32;
        }
    }
    lora
}

fn greedy(model: &Model, lora: Option<&Lora>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut ws = Workspace::new();
    let mut out = Vec::new();
    let mut next = prompt.to_vec();
    for _ in 0..n {
        let logits = model
            .forward_adapted(&next, &mut cache, &mut ws, Logits::Last, lora)
            .unwrap();
        let t = argmax(logits);
        out.push(t);
        next = vec![t];
    }
    out
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load(path: &Path) -> Model {
    Model::load(path, &LoadOptions::default()).unwrap()
}

#[test]
fn gguf_lora_round_trips_and_verifies_on_tiny_model() {
    let model = load(&tiny("llama.gguf"));
    let lora = seeded_lora(&model, 4, 8.0, 0.5, 7);
    let dir = tempfile::tempdir().unwrap();
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let out = dir.path().join(format!("adapter-{ty}.gguf"));
        let e = write_gguf_lora(&model, &lora, ty, &out, true).unwrap();
        let v = e.verification.unwrap();
        println!(
            "gguf-lora {ty}: max rel logit error {:.3e} (bound {:.1e}), adapter effect {:.3e}, greedy {:?}",
            v.max_error, v.tolerance, v.adapter_effect, e.greedy
        );
        assert!(
            v.adapter_effect > 0.05,
            "the adapter must change the logits"
        );
        assert_eq!(e.tensors, 2 * 7 * model.config.n_layers);
        let g = e.greedy.unwrap();
        assert_eq!(g.0, g.1, "{ty}: greedy tokens");
        if ty == GgmlType::F32 {
            assert_eq!(v.max_error, 0.0, "f32 factors round-trip exactly");
            let back = Lora::load_gguf_lora(&out, &model.config).unwrap();
            for ((n, _, a), (_, _, b)) in lora.tensors().iter().zip(&back.tensors()) {
                assert_eq!(a, b, "{n}");
            }
            assert_eq!(back.spec().scale(), lora.spec().scale());
        }
    }
}

/// llama.cpp has no rsLoRA flag: the written alpha must give llama.cpp's `alpha / r` the
/// adapter's `α/√r`, and the reloaded adapter the same logits.
#[test]
fn rslora_scale_survives_the_round_trip() {
    let model = load(&tiny("llama.gguf"));
    let mut lora = seeded_lora(&model, 4, 8.0, 0.5, 5);
    let mut spec = lora.spec().clone();
    spec.rslora = true;
    let mut rs = Lora::zeros(&model.config, &spec);
    for ((_, _, d), (_, _, s)) in rs.tensors_mut().into_iter().zip(lora.tensors_mut()) {
        d.copy_from_slice(s);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rs.gguf");
    let e = write_gguf_lora(&model, &rs, GgmlType::F32, &out, true).unwrap();
    assert_eq!(e.verification.unwrap().max_error, 0.0);
    let alpha = GgufFile::open(&out)
        .unwrap()
        .get_f32("adapter.lora.alpha")
        .unwrap();
    assert_eq!(
        alpha,
        (8.0 / 2.0 * 4.0) as f32,
        "α/√r · r with α = 8, r = 4"
    );
    let back = Lora::load_gguf_lora(&out, &model.config).unwrap();
    assert_eq!(back.spec().scale(), rs.spec().scale());
}

/// The file's layout, checked independently of bora's reader: llama.cpp's metadata, names,
/// ggml dims `[in, r]` / `[r, out]`, A as is, B with q/k rows in the interleaved order
/// (applying bora-formats' HF → GGUF row permutation to PEFT's B gives the stored rows).
#[test]
fn gguf_lora_layout_is_llama_cpp_s() {
    let model = load(&tiny("llama.gguf"));
    let lora = seeded_lora(&model, 4, 8.0, 0.5, 11);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter.gguf");
    write_gguf_lora(&model, &lora, GgmlType::F32, &out, false).unwrap();
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_str("general.type").unwrap(), "adapter");
    assert_eq!(g.get_str("adapter.type").unwrap(), "lora");
    assert_eq!(g.get_f32("adapter.lora.alpha").unwrap(), 8.0);
    let c = &model.config;
    for (peft_name, shape, data) in lora.tensors() {
        let n = LoraName::parse(&peft_name, Scheme::Hf).unwrap();
        let info = g.require_tensor(&n.format(Scheme::Gguf)).unwrap();
        assert_eq!(info.ty, GgmlType::F32);
        assert_eq!(
            info.dims,
            [shape[1] as u64, shape[0] as u64],
            "{}",
            info.name
        );
        let stored = g.tensor_f32(info).unwrap();
        let heads = match &peft_name {
            s if s.contains("q_proj.lora_B") => Some(c.n_heads),
            s if s.contains("k_proj.lora_B") => Some(c.n_kv_heads),
            _ => None,
        };
        let want: Vec<f32> = match heads {
            Some(h) => {
                let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                permute_rows_half_to_interleaved(&bytes, shape[1] * 4, h)
                    .unwrap()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect()
            }
            None => data.to_vec(),
        };
        assert_eq!(stored, want, "{}", info.name);
    }
    assert_eq!(g.tensors().len(), lora.tensors().len());
}

#[test]
fn merged_gguf_verifies_in_every_dtype() {
    let dir = tempfile::tempdir().unwrap();
    for base in ["llama.gguf", "llama_q8_0.gguf"] {
        let model = load(&tiny(base));
        let lora = seeded_lora(&model, 4, 8.0, 0.5, 3);
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
        ] {
            let out = dir.path().join(format!("{base}-{ty}.gguf"));
            let e = write_gguf(&model, Some(&lora), ty, &out, true)
                .unwrap_or_else(|e| panic!("{base} {ty}: {e}"));
            let v = e.verification.unwrap();
            println!(
                "{base} merged {ty}: max rel logit error {:.3e} (bound {:.1e}), adapter effect {:.3e}, greedy {:?}",
                v.max_error, v.tolerance, v.adapter_effect, e.greedy
            );
            let (agree, total) = e.greedy.unwrap();
            match ty {
                GgmlType::F32 | GgmlType::F16 => assert_eq!(agree, total, "{base} {ty}"),
                GgmlType::BF16 | GgmlType::Q8_0 => assert!(10 * agree >= 9 * total, "{base} {ty}"),
                _ => {}
            }
            let g = GgufFile::open(&out).unwrap();
            let src = GgufFile::open(tiny(base)).unwrap();
            // Every key of the base is carried, only the file type changes.
            for (k, val) in src.metadata() {
                if k != "general.file_type" {
                    assert_eq!(g.get(k), Some(val), "{k}");
                }
            }
            let names: Vec<_> = g.tensors().iter().map(|t| (&t.name, &t.dims)).collect();
            let src_names: Vec<_> = src.tensors().iter().map(|t| (&t.name, &t.dims)).collect();
            assert_eq!(names, src_names);
            for t in g.tensors() {
                let q4 = matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1);
                let want = match () {
                    _ if t.dims.len() == 1 => GgmlType::F32,
                    // Tied: the embeddings are the output head, kept at Q8_0 in 4-bit files.
                    _ if t.name == "token_embd.weight" && q4 => GgmlType::Q8_0,
                    _ => ty,
                };
                assert_eq!(t.ty, want, "{}", t.name);
            }
        }
    }
}

/// Without an adapter, a merged export in the base's own type is the base, byte for byte in
/// its tensor data.
#[test]
fn merged_gguf_without_adapter_copies_the_base_tensors() {
    let model = load(&tiny("llama_q8_0.gguf"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("same.gguf");
    let e = write_gguf(&model, None, GgmlType::Q8_0, &out, true).unwrap();
    assert_eq!(e.verification.unwrap().max_error, 0.0);
    let (a, b) = (
        GgufFile::open(&out).unwrap(),
        GgufFile::open(tiny("llama_q8_0.gguf")).unwrap(),
    );
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(a.tensor_bytes(x).unwrap(), b.tensor_bytes(y).unwrap());
    }
}

#[test]
fn bad_requests_are_clear_errors() {
    let model = load(&tiny("llama.gguf"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let lora = seeded_lora(&model, 4, 8.0, 0.5, 1);

    let e = write_gguf(&model, Some(&lora), GgmlType::Q4_K, &out, true).unwrap_err();
    assert!(e.to_string().contains("not q4_k"), "{e}");
    let e = write_gguf_lora(&model, &lora, GgmlType::Q8_0, &out, true).unwrap_err();
    assert!(e.to_string().contains("f32, f16 or bf16"), "{e}");

    // An adapter made for a model of another shape.
    let mut other = model.config.clone();
    other.hidden_size = 32;
    let foreign = Lora::zeros(&other, lora.spec());
    for r in [
        write_gguf(&model, Some(&foreign), GgmlType::F16, &out, true).map(|_| ()),
        write_gguf_lora(&model, &foreign, GgmlType::F32, &out, true).map(|_| ()),
    ] {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("another shape"), "{e}");
    }
    assert!(!out.exists());

    // An HF base without a SentencePiece vocabulary cannot become a merged GGUF here (the
    // error names the converter to use); its adapter can.
    let hf = load(&tiny("llama"));
    let e = write_gguf(&hf, None, GgmlType::F16, &out, true).unwrap_err();
    assert!(e.to_string().contains("convert_hf_to_gguf"), "{e}");

    // The adapter reader refuses a model file and an adapter for another model.
    let e = Lora::load_gguf_lora(&tiny("llama.gguf"), &model.config).unwrap_err();
    assert!(e.to_string().contains("not a LoRA adapter"), "{e}");
    write_gguf_lora(&model, &lora, GgmlType::F32, &out, false).unwrap();
    let mut fewer = model.config.clone();
    fewer.n_layers = 1;
    fewer.layer_windows.truncate(1);
    let e = Lora::load_gguf_lora(&out, &fewer).unwrap_err();
    assert!(e.to_string().contains("another model"), "{e}");
}

/// bora's tokens equal llama.cpp's at every step up to the first where llama.cpp's own top-1
/// lead is under `NEAR_TIE` logits: ggml rounds activations to 8 bits in quantized products
/// (bora to 16), which can flip such a tie, after which the two continuations are unrelated.
/// Returns the number of steps compared.
fn agree_until_near_tie(bora: &[u32], llama: &Value, what: &str) -> usize {
    const NEAR_TIE: f64 = 0.1;
    let want = ids(&llama["tokens"]);
    let margins = llama["margins"].as_array().unwrap();
    let mut n = 0;
    for ((b, w), m) in bora.iter().zip(&want).zip(margins) {
        if m.as_f64().unwrap() < NEAR_TIE {
            break;
        }
        assert_eq!(b, w, "{what}: step {n}: bora {bora:?}, llama.cpp {want:?}");
        n += 1;
    }
    n
}

/// The default model with the seeded adapter, against llama.cpp: llama.cpp applying bora's
/// gguf-lora export to the base GGUF gives the greedy tokens of bora's base + adapter in
/// memory, and llama.cpp running bora's merged f16 and q8_0 exports gives the tokens bora
/// gives running the same files. Needs the default model (`scripts/fetch-default-model.sh`).
#[test]
fn smollm2_exports_match_llama_cpp() {
    let json = fixture_json();
    let model = load(&cache::fetched_default_model().unwrap());
    let lora = seeded_lora(
        &model,
        json["rank"].as_u64().unwrap() as usize,
        json["alpha"].as_f64().unwrap(),
        json["b_scale"].as_f64().unwrap(),
        json["seed"].as_u64().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let e = write_gguf_lora(
        &model,
        &lora,
        GgmlType::F32,
        &dir.path().join("a.gguf"),
        true,
    )
    .unwrap();
    println!(
        "smollm2 gguf-lora f32: {:?} greedy {:?}",
        e.verification, e.greedy
    );
    let n = json["n_gen"].as_u64().unwrap() as usize;
    let cases = json["prompts"].as_array().unwrap();
    let (mut compared, mut total) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let p = ids(&case["ids"]);
        let tuned = greedy(&model, Some(&lora), &p, n);
        assert_ne!(
            tuned,
            greedy(&model, None, &p, n),
            "prompt {i}: the adapter must change the output"
        );
        compared += agree_until_near_tie(&tuned, &case["lora-f32"], &format!("prompt {i} lora"));
        total += n;
    }
    for ty in [GgmlType::F16, GgmlType::Q8_0] {
        let name = format!("merged-{}", ty.name().to_lowercase());
        let path = dir.path().join(format!("{name}.gguf"));
        let e = write_gguf(&model, Some(&lora), ty, &path, true).unwrap();
        println!("smollm2 {name}: {:?} greedy {:?}", e.verification, e.greedy);
        let merged = load(&path);
        for (i, case) in cases.iter().enumerate() {
            let got = greedy(&merged, None, &ids(&case["ids"]), n);
            compared += agree_until_near_tie(&got, &case[&name], &format!("prompt {i} {name}"));
            total += n;
        }
    }
    println!("{compared}/{total} greedy steps compared with llama.cpp before a near tie");
    assert!(
        2 * compared >= total,
        "too few steps compared: {compared}/{total}"
    );
}

/// Writes the default model's exports for `scripts/make_gguf_export_fixtures.py` into
/// `$BORA_GGUF_EXPORT_DIR` (run by that script, not by CI).
#[test]
#[ignore]
fn write_exports_for_llama_cpp() {
    let dir = PathBuf::from(std::env::var("BORA_GGUF_EXPORT_DIR").unwrap());
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("spec.json")).unwrap()).unwrap();
    let model = load(&cache::fetched_default_model().unwrap());
    let lora = seeded_lora(
        &model,
        spec["rank"].as_u64().unwrap() as usize,
        spec["alpha"].as_f64().unwrap(),
        spec["b_scale"].as_f64().unwrap(),
        spec["seed"].as_u64().unwrap(),
    );
    write_gguf_lora(
        &model,
        &lora,
        GgmlType::F32,
        &dir.join("adapter-f32.gguf"),
        true,
    )
    .unwrap();
    write_gguf_lora(
        &model,
        &lora,
        GgmlType::F16,
        &dir.join("adapter-f16.gguf"),
        true,
    )
    .unwrap();
    let n = spec["n_gen"].as_u64().unwrap() as usize;
    let prompts: Vec<Vec<u32>> = spec["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let mut bora: Vec<serde_json::Map<String, Value>> = prompts
        .iter()
        .map(|p| {
            let mut m = serde_json::Map::new();
            m.insert("lora".into(), greedy(&model, Some(&lora), p, n).into());
            m.insert("base".into(), greedy(&model, None, p, n).into());
            m
        })
        .collect();
    // Each merged file as bora runs it after reloading: the tokens llama.cpp must reproduce.
    for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_1] {
        let name = format!("merged-{}", ty.name().to_lowercase());
        let path = dir.join(format!("{name}.gguf"));
        // Re-encoding at 4 bits moves this adapter's merged weights by more than the adapter
        // moves them, so the q4_1 file fails bora's check (closer to the base than to the
        // adapted model); it is still written, to prove llama.cpp runs it as bora does.
        write_gguf(&model, Some(&lora), ty, &path, ty != GgmlType::Q4_1).unwrap();
        let merged = load(&path);
        for (b, p) in bora.iter_mut().zip(&prompts) {
            b.insert(name.clone(), greedy(&merged, None, p, n).into());
        }
    }
    std::fs::write(dir.join("bora.json"), serde_json::to_string(&bora).unwrap()).unwrap();
}
