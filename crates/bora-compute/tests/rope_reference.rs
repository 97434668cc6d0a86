//! RoPE tables against transformers' rotary embedding (`tests/fixtures/rope_hf.txt`, written
//! by `scripts/make_compute_fixtures.py`): default, linear, Llama 3 and YaRN (with and
//! without the mscale pair), at positions up to 39,999.

use std::collections::HashMap;

use bora_compute::{rope_forward, RopeScaling, RopeTables};

struct Case {
    head_dim: usize,
    theta: f64,
    scaling: RopeScaling,
    /// (position, frequency index) → (cos, sin)
    expected: HashMap<(usize, usize), (f64, f64)>,
}

fn scaling(params: &HashMap<String, String>) -> RopeScaling {
    let f = |k: &str| params[k].parse::<f64>().unwrap();
    let u = |k: &str| f(k) as usize;
    let opt = |k: &str| params.get(k).map(|v| v.parse::<f64>().unwrap());
    match params["rope_type"].as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: f("factor"),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor"),
            low_freq_factor: f("low_freq_factor"),
            high_freq_factor: f("high_freq_factor"),
            original_max_position_embeddings: u("original_max_position_embeddings"),
        },
        "yarn" => RopeScaling::Yarn {
            factor: f("factor"),
            original_max_position_embeddings: u("original_max_position_embeddings"),
            beta_fast: f("beta_fast"),
            beta_slow: f("beta_slow"),
            attention_factor: opt("attention_factor"),
            mscale: opt("mscale"),
            mscale_all_dim: opt("mscale_all_dim"),
            truncate: true,
        },
        other => panic!("fixture rope_type {other} not handled"),
    }
}

fn load() -> Vec<(String, Case)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rope_hf.txt");
    let text = std::fs::read_to_string(path).unwrap();
    let mut cases: Vec<(String, Case)> = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let Some(rest) = line.strip_prefix("# case ") {
            let p: Vec<&str> = rest.split_whitespace().collect();
            let params: HashMap<String, String> = p[3..]
                .iter()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            cases.push((
                p[0].to_string(),
                Case {
                    head_dim: p[1].parse().unwrap(),
                    theta: p[2].parse().unwrap(),
                    scaling: scaling(&params),
                    expected: HashMap::new(),
                },
            ));
        } else if !line.starts_with('#') && parts.len() == 5 {
            let case = &mut cases.last_mut().unwrap().1;
            let key = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
            case.expected
                .insert(key, (parts[3].parse().unwrap(), parts[4].parse().unwrap()));
        }
    }
    cases
}

#[test]
fn tables_match_transformers_rotary_embedding() {
    let cases = load();
    assert_eq!(cases.len(), 5);
    for (name, case) in cases {
        let hd = case.head_dim;
        let half = hd / 2;
        let tables = RopeTables::new(hd, case.theta, &case.scaling, 40000).unwrap();
        let mut checked = 0;
        for (&(pos, i), &(cos, sin)) in &case.expected {
            // Rotating the unit vector e_i yields (cos, sin) at columns i and i + half.
            let mut x = vec![0f32; hd];
            x[i] = 1.0;
            rope_forward(&mut x, &[pos], 1, &tables);
            let (c, s) = (x[i] as f64, x[i + half] as f64);
            // Tight on purpose: bora computes angles in f32 as transformers does, so even at
            // position 39,999 (where one ulp of inv_freq moves the angle by ~1e-3) they agree.
            let tol = 1e-6;
            assert!(
                (c - cos).abs() <= tol && (s - sin).abs() <= tol,
                "{name} pos {pos} freq {i}: bora ({c}, {s}) vs transformers ({cos}, {sin})"
            );
            checked += 1;
        }
        assert_eq!(checked, 6 * half, "{name}: every fixture entry checked");
    }
}
