//! Export followed by reload, with adapters the input draws: any rank, scale and seed,
//! merged into a GGUF of any type or written as a llama.cpp LoRA GGUF, then reloaded and
//! checked. The export succeeds or fails with an error, never a panic; the final name holds
//! a file only when its check passed, and nothing else is left beside it.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use bora_formats::quant::GgmlType;
use bora_model::export::gguf::{write_gguf, write_gguf_lora};
use bora_model::{LoadOptions, Lora, Model};
use libfuzzer_sys::fuzz_target;

const TYPES: [GgmlType; 7] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
];

fn base() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        // The tiny Llama fixture of bora-model (2 layers, hidden 64, vocabulary 96).
        let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/bora-model/tests/fixtures/tiny/llama.gguf");
        Model::load(gguf, &LoadOptions::default()).expect("the tiny GGUF")
    })
}

fuzz_target!(|data: &[u8]| {
    let [kind, ty, rank, scale_bits @ .., s0, s1] = data else {
        return;
    };
    let model = base();
    let rank = usize::from(*rank % 17);
    let scale = f32::from_le_bytes(
        scale_bits
            .iter()
            .copied()
            .chain([0; 4])
            .take(4)
            .collect::<Vec<_>>()
            .try_into()
            .expect("4 bytes"),
    );
    if !scale.is_finite() || rank == 0 {
        return;
    }
    let lora = Lora::random(
        &model.config,
        rank,
        scale,
        u64::from(*s0) << 8 | u64::from(*s1),
    );
    let dir = std::env::temp_dir().join(format!("bora-fuzz-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = dir.join("out.gguf");
    let ty = TYPES[usize::from(*ty) % TYPES.len()];
    let result = if kind % 2 == 0 {
        write_gguf(model, Some(&lora), ty, &out, true).map(|_| ())
    } else {
        write_gguf_lora(model, &lora, ty, &out, true).map(|_| ())
    };
    match result {
        Ok(()) => {
            assert!(out.is_file());
            Model::load(&out, &LoadOptions::default())
                .map(|_| ())
                .or_else(|_| Lora::load_gguf_lora(&out, &model.config).map(|_| ()))
                .expect("a verified export reloads");
        }
        Err(_) => assert!(
            !out.exists(),
            "a failed export left a file under its final name"
        ),
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "out.gguf" && n != "out.gguf.unverified")
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(dir.join("out.gguf.unverified"));
});
