//! NF4 against bitsandbytes: fixtures from `scripts/make_nf4_fixtures.py` (bitsandbytes'
//! CPU `quantize_4bit` / `dequantize_4bit`, blocksize 64, double quantization).

use std::path::PathBuf;

use bora_formats::nf4::{dynamic_code, Nf4, NF4_CODE};
use bora_formats::safetensors::Safetensors;

fn fixture() -> Safetensors {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nf4/nf4.safetensors");
    Safetensors::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bytes(st: &Safetensors, name: &str) -> Vec<u8> {
    st.tensor_bytes(name).unwrap().to_vec()
}

fn f32s(st: &Safetensors, name: &str) -> Vec<f32> {
    st.tensor_f32(name).unwrap()
}

const CASES: [&str; 2] = ["smollm2_q", "normal"];

#[test]
fn code_tables_are_bitsandbytes_tables() {
    let st = fixture();
    let nf4 = f32s(&st, "nf4_code");
    assert_eq!(
        nf4.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        NF4_CODE.map(f32::to_bits)
    );
    let dynamic = f32s(&st, "dynamic_code");
    for (i, want) in dynamic.iter().enumerate() {
        assert_eq!(
            dynamic_code(i as u8).to_bits(),
            want.to_bits(),
            "dynamic code {i}"
        );
    }
}

/// bitsandbytes' stored tensor, decoded by bora, gives bitsandbytes' values bit for bit.
#[test]
fn dequantization_matches_bitsandbytes_bit_for_bit() {
    let st = fixture();
    for case in CASES {
        let want = f32s(&st, &format!("{case}.dequant"));
        let q = Nf4::from_parts(
            want.len(),
            bytes(&st, &format!("{case}.packed")),
            bytes(&st, &format!("{case}.absmax_q")),
            f32s(&st, &format!("{case}.absmax_scale")),
            f32s(&st, &format!("{case}.offset"))[0],
        )
        .unwrap();
        let mut got = vec![0f32; want.len()];
        q.dequantize(0, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{case}: element {i}: {g} vs {w}");
        }
    }
}

/// bora's quantizer stores what bitsandbytes stores for the same input: the same 4-bit codes,
/// maxima, scales and offset. The 8-bit codes of the maxima may differ by one step where a
/// maximum falls near the middle of two codes: bitsandbytes' CPU kernel finds the nearest code
/// through a lookup table of the normalised value, bora compares distances exactly.
#[test]
fn quantization_matches_bitsandbytes_bytes() {
    let st = fixture();
    for case in CASES {
        let input = f32s(&st, &format!("{case}.input"));
        let want = Nf4::from_parts(
            input.len(),
            bytes(&st, &format!("{case}.packed")),
            bytes(&st, &format!("{case}.absmax_q")),
            f32s(&st, &format!("{case}.absmax_scale")),
            f32s(&st, &format!("{case}.offset"))[0],
        )
        .unwrap();
        let got = Nf4::quantize(&input).unwrap();
        let (g, w) = (got.parts(), want.parts());
        assert_eq!(g.3.to_bits(), w.3.to_bits(), "{case}: offset");
        assert_eq!(g.2, w.2, "{case}: absmax scales");
        assert!(g.0 == w.0, "{case}: 4-bit codes differ");
        let near = g.1.iter().zip(w.1).filter(|(x, y)| x != y).count();
        assert!(
            g.1.iter().zip(w.1).all(|(x, y)| x.abs_diff(*y) <= 1) && near * 50 <= g.1.len(),
            "{case}: {near} of {} 8-bit absmax codes differ, or by more than one step",
            g.1.len()
        );
    }
}
