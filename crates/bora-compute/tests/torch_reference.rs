//! Every kernel's forward and backward against PyTorch autograd on transformers' own modules
//! (`tests/fixtures/kernels_torch.txt`, written by `scripts/make_compute_fixtures.py`).

use std::collections::HashMap;

use bora_compute::{
    attention_backward, attention_forward, cross_entropy_chunked, rmsnorm_backward,
    rmsnorm_forward, rope_backward, rope_forward, softmax_backward, softmax_forward,
    swiglu_backward, swiglu_forward, AttentionShape, RopeScaling, RopeTables, Scratch, Weight,
};

fn fixture() -> HashMap<String, Vec<f64>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kernels_torch.txt"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let mut parts = line.split_whitespace();
            let name = parts.next().unwrap().to_string();
            (name, parts.map(|v| v.parse::<f64>().unwrap()).collect())
        })
        .collect()
}

struct Ref(HashMap<String, Vec<f64>>);

impl Ref {
    fn f32(&self, name: &str) -> Vec<f32> {
        self.0[name].iter().map(|&v| v as f32).collect()
    }

    /// Asserts `got` matches tensor `name` within `tol` relative to the tensor's largest
    /// magnitude (gradients mix large and near-cancelling entries).
    fn check(&self, name: &str, got: &[f32], tol: f64) {
        let want = &self.0[name];
        assert_eq!(got.len(), want.len(), "{name}: length");
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs())).max(1e-12);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol * scale,
                "{name}[{i}]: bora {g}, torch {w}"
            );
        }
    }
}

#[test]
fn rmsnorm_matches_transformers() {
    let r = Ref(fixture());
    let (x, w, dy) = (r.f32("rms.x"), r.f32("rms.w"), r.f32("rms.dy"));
    let mut y = vec![0f32; x.len()];
    let mut rstd = vec![0f32; x.len() / w.len()];
    rmsnorm_forward(&mut y, &mut rstd, &x, &w, 1e-5);
    r.check("rms.y", &y, 1e-6);
    let mut dx = vec![0f32; x.len()];
    let mut dw = vec![0f32; w.len()];
    rmsnorm_backward(&mut dx, Some(&mut dw), &dy, &x, &w, &rstd);
    r.check("rms.dx", &dx, 1e-6);
    r.check("rms.dw", &dw, 1e-6);
}

#[test]
fn rope_matches_transformers() {
    let r = Ref(fixture());
    let positions: Vec<usize> = r.0["rope.positions"].iter().map(|&p| p as usize).collect();
    let tables = RopeTables::new(8, 10000.0, &RopeScaling::None, 64).unwrap();
    let mut y = r.f32("rope.x");
    rope_forward(&mut y, &positions, 3, &tables);
    r.check("rope.y", &y, 1e-6);
    let mut dx = r.f32("rope.dy");
    rope_backward(&mut dx, &positions, 3, &tables);
    r.check("rope.dx", &dx, 1e-6);
}

#[test]
fn attention_matches_transformers_eager_attention() {
    let r = Ref(fixture());
    for (name, window) in [("attn_win", Some(4)), ("attn_full", None)] {
        let shape = AttentionShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
            window,
            scale: 8f32.powf(-0.5),
        };
        let segments = [0usize, 5, 12];
        let get = |t: &str| r.f32(&format!("{name}.{t}"));
        let (q, k, v, dout) = (get("q"), get("k"), get("v"), get("dout"));
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; 12 * 4];
        attention_forward(&mut out, &mut lse, &q, &k, &v, &segments, &shape);
        r.check(&format!("{name}.out"), &out, 1e-5);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        attention_backward(
            &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &segments, &shape,
        );
        r.check(&format!("{name}.dq"), &dq, 1e-5);
        r.check(&format!("{name}.dk"), &dk, 1e-5);
        r.check(&format!("{name}.dv"), &dv, 1e-5);
    }
}

#[test]
fn swiglu_and_softmax_match_torch() {
    let r = Ref(fixture());
    let (g, u, dh) = (r.f32("swiglu.gate"), r.f32("swiglu.up"), r.f32("swiglu.dh"));
    let mut h = vec![0f32; g.len()];
    swiglu_forward(&mut h, &g, &u);
    r.check("swiglu.h", &h, 1e-6);
    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
    swiglu_backward(&mut dg, &mut du, &dh, &g, &u);
    r.check("swiglu.dgate", &dg, 1e-6);
    r.check("swiglu.dup", &du, 1e-6);

    let (x, dy) = (r.f32("softmax.x"), r.f32("softmax.dy"));
    let mut y = vec![0f32; x.len()];
    softmax_forward(&mut y, &x, 9);
    r.check("softmax.y", &y, 1e-6);
    let mut dx = vec![0f32; x.len()];
    softmax_backward(&mut dx, &dy, &y, 9);
    r.check("softmax.dx", &dx, 1e-6);
}

#[test]
fn cross_entropy_matches_torch_with_ignored_targets() {
    let r = Ref(fixture());
    let hidden = r.f32("ce.hidden");
    let w = Weight::from_f32("ce.w", 24, 16, r.f32("ce.w")).unwrap();
    let targets: Vec<Option<u32>> = r.0["ce.targets"]
        .iter()
        .map(|&t| (t >= 0.0).then_some(t as u32))
        .collect();
    let mut dh = vec![0f32; hidden.len()];
    let ce = cross_entropy_chunked(
        Some(&mut dh),
        &hidden,
        &w,
        &targets,
        1.0,
        2,
        &mut Scratch::new(),
    )
    .unwrap();
    assert_eq!(ce.count, 5);
    let want = r.0["ce.loss"][0];
    assert!(
        (ce.loss_sum - want).abs() <= 1e-5 * want.abs(),
        "loss: bora {}, torch {want}",
        ce.loss_sum
    );
    r.check("ce.dh", &dh, 1e-5);
}
