//! Quant codecs against gguf-py: fixtures from `scripts/make_format_fixtures.py`.

use std::path::PathBuf;

use bora_formats::quant::{dequantize, quantize, GgmlType};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Compares bit patterns so that -0.0 vs 0.0 and NaN payloads count as differences.
fn assert_bits_eq(ty: GgmlType, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{ty}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{ty}: element {i}: got {g}, gguf-py {w}"
        );
    }
}

#[test]
fn encoders_match_gguf_py_bytes_exactly() {
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
    ] {
        let src = f32s(&fixture(&format!("{ty}.src.f32")));
        let want = fixture(&format!("{ty}.q"));
        let got = quantize(ty, &src).unwrap();
        assert_eq!(got.len(), want.len(), "{ty}: byte length");
        for (b, (g, w)) in got
            .chunks(ty.block_bytes())
            .zip(want.chunks(ty.block_bytes()))
            .enumerate()
        {
            assert_eq!(g, w, "{ty}: block {b} differs from gguf-py");
        }
    }
}

#[test]
fn decoders_match_gguf_py_floats_exactly() {
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let q = fixture(&format!("{ty}.q"));
        let want = f32s(&fixture(&format!("{ty}.dec.f32")));
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &q, &mut got).unwrap();
        assert_bits_eq(ty, &got, &want);
    }
}
