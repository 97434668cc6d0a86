//! bora-train against the reference libraries, through fixtures written by
//! `scripts/make_train_fixtures.py` (torch, transformers, peft, numpy, tensorboard).

use std::path::PathBuf;

use bora_train::{
    clip_grad_norm, init_lora, kaiming_uniform_bound, AdamW, AdamWConfig, AdapterConfig,
    EventWriter, LoraPart, LoraTarget, LrSchedule, Rng, RunConfig, ScheduleKind, Stream,
};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(f32s).collect()
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs().max(1e-6);
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, torch {w}");
    }
}

#[test]
fn adamw_matches_torch() {
    let fx = load("adamw.json");
    for (c, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let betas = case["betas"].as_array().unwrap();
        let config = AdamWConfig {
            betas: (betas[0].as_f64().unwrap(), betas[1].as_f64().unwrap()),
            eps: case["eps"].as_f64().unwrap(),
            weight_decay: case["weight_decay"].as_f64().unwrap(),
        };
        let mut params = tensors(&case["initial"]);
        let sizes: Vec<usize> = params.iter().map(Vec::len).collect();
        let mut opt = AdamW::new(config, &sizes);
        let lrs = case["lrs"].as_array().unwrap();
        for (s, lr) in lrs.iter().enumerate() {
            let grads = tensors(&case["grads"][s]);
            let grad_refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            let mut param_refs: Vec<&mut [f32]> =
                params.iter_mut().map(Vec::as_mut_slice).collect();
            opt.step(lr.as_f64().unwrap(), &mut param_refs, &grad_refs)
                .unwrap();
            for (i, want) in tensors(&case["after"][s]).iter().enumerate() {
                assert_close(
                    &params[i],
                    want,
                    1e-6,
                    &format!("case {c} step {s} param {i}"),
                );
            }
        }
        assert_eq!(opt.state().step, case["step"].as_u64().unwrap());
        for (i, want) in tensors(&case["exp_avg"]).iter().enumerate() {
            assert_close(
                &opt.state().exp_avg[i],
                want,
                1e-6,
                &format!("case {c} exp_avg {i}"),
            );
        }
        for (i, want) in tensors(&case["exp_avg_sq"]).iter().enumerate() {
            assert_close(
                &opt.state().exp_avg_sq[i],
                want,
                1e-6,
                &format!("case {c} exp_avg_sq {i}"),
            );
        }
    }
}

#[test]
fn adamw_rejects_mismatched_buffers() {
    let config = AdamWConfig {
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(config, &[3]);
    let mut p = vec![0.0f32; 2];
    let g = vec![0.0f32; 2];
    let err = opt.step(1e-3, &mut [&mut p], &[&g]).unwrap_err();
    assert!(err.to_string().contains("state has 3 elements"), "{err}");
    assert_eq!(opt.state().step, 0, "a rejected step must not count");
}

#[test]
fn schedules_match_transformers() {
    let fx = load("schedules.json");
    for case in fx["cases"].as_array().unwrap() {
        let kind = match case["kind"].as_str().unwrap() {
            "constant" => ScheduleKind::Constant,
            "linear" => ScheduleKind::Linear,
            "cosine" => ScheduleKind::Cosine,
            other => panic!("unknown kind {other}"),
        };
        let schedule = LrSchedule {
            kind,
            base_lr: 3e-4,
            warmup_steps: case["warmup"].as_u64().unwrap(),
            total_steps: case["total"].as_u64().unwrap(),
        };
        for (step, want) in case["multipliers"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = schedule.multiplier(step as u64);
            assert!(
                (got - want).abs() <= 1e-12,
                "{case}: step {step}: got {got}, transformers {want}"
            );
            assert!((schedule.lr(step as u64) - 3e-4 * want).abs() <= 1e-15);
        }
    }
}

#[test]
fn clipping_matches_torch() {
    let fx = load("clip.json");
    for (c, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let mut grads = tensors(&case["grads"]);
        let mut refs: Vec<&mut [f32]> = grads.iter_mut().map(Vec::as_mut_slice).collect();
        let norm = clip_grad_norm(&mut refs, case["max_norm"].as_f64().unwrap() as f32);
        let want = case["total_norm"].as_f64().unwrap() as f32;
        assert!(
            (norm - want).abs() <= 1e-6 * want,
            "case {c}: norm {norm}, torch {want}"
        );
        for (i, want) in tensors(&case["clipped"]).iter().enumerate() {
            assert_close(&grads[i], want, 1e-6, &format!("case {c} grad {i}"));
        }
    }
}

#[test]
fn lora_init_bound_matches_torch_kaiming_uniform() {
    let fx = load("kaiming.json");
    for case in fx["cases"].as_array().unwrap() {
        let fan_in = case["in_features"].as_u64().unwrap() as usize;
        let want = case["bound_from_draws"].as_f64().unwrap() as f32;
        let bound = kaiming_uniform_bound(fan_in);
        assert!(
            (bound - want).abs() <= 1e-6 * want,
            "fan_in {fan_in}: {bound} vs {want}"
        );
        assert!(case["max_abs"].as_f64().unwrap() as f32 <= bound);

        let (rank, out) = (8, 24);
        let mut rng = Rng::new(7, Stream::Init);
        let (a, b) = init_lora(&mut rng, rank, fan_in, out);
        assert_eq!((a.len(), b.len()), (rank * fan_in, out * rank));
        assert!(b.iter().all(|&x| x == 0.0));
        assert!(a.iter().all(|x| x.abs() <= bound));
        let max = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(
            max > 0.9 * bound,
            "draws should fill the range: max {max}, bound {bound}"
        );
    }
}

#[test]
fn rng_matches_numpy_pcg64() {
    let fx = load("pcg64.json");
    for case in fx["cases"].as_array().unwrap() {
        let state: u128 = case["state"].as_str().unwrap().parse().unwrap();
        let inc: u128 = case["inc"].as_str().unwrap().parse().unwrap();
        let mut rng = Rng::from_raw(state, inc).unwrap();
        for (i, want) in case["raw"].as_array().unwrap().iter().enumerate() {
            let want: u64 = want.as_str().unwrap().parse().unwrap();
            assert_eq!(rng.next_u64(), want, "output {i}");
        }
    }
}

#[test]
fn event_file_matches_torch_summary_writer() {
    let fx = load("tfevents/sample.json");
    let torch_bytes = std::fs::read(fixture("tfevents/sample.tfevents")).unwrap();
    let torch_records = split_records(&torch_bytes);
    let events = fx["events"].as_array().unwrap();
    assert_eq!(torch_records.len(), events.len());

    let mut writer =
        EventWriter::new(Vec::new(), events[0]["wall_time"].as_f64().unwrap()).unwrap();
    for ev in &events[1..] {
        writer
            .scalar(
                ev["tag"].as_str().unwrap(),
                ev["value"].as_f64().unwrap() as f32,
                ev["step"].as_i64().unwrap(),
                ev["wall_time"].as_f64().unwrap(),
            )
            .unwrap();
    }
    let ours = writer.into_inner();
    let our_records = split_records(&ours);
    assert_eq!(our_records.len(), torch_records.len());

    // torch's version record adds `source_metadata` (field 10, naming its writer) after the
    // fields bora writes; everything before it must be identical.
    let (ours0, torch0) = (our_records[0], torch_records[0]);
    assert_eq!(&torch0[..ours0.len()], ours0);
    assert_eq!(torch0[ours0.len()], (10 << 3) | 2);
    // Scalar records: byte for byte, framing and CRCs included.
    let our_tail = &ours[record_span(&ours, 1)..];
    let torch_tail = &torch_bytes[record_span(&torch_bytes, 1)..];
    assert_eq!(our_tail, torch_tail);
}

/// Splits a TFRecord stream into payloads, checking every masked CRC with bora's CRC.
fn split_records(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        assert_eq!(len_crc, bora_train::masked_crc32c(&bytes[..8]));
        let payload = &bytes[12..12 + len];
        let crc = u32::from_le_bytes(bytes[12 + len..16 + len].try_into().unwrap());
        assert_eq!(crc, bora_train::masked_crc32c(payload));
        out.push(payload);
        bytes = &bytes[16 + len..];
    }
    out
}

/// Byte offset of record `n`.
fn record_span(bytes: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 16 + len;
    }
    at
}

#[test]
fn event_record_matches_formats_verified_bytes() {
    // The record torch's SummaryWriter writes for tag "train/loss", value 1.5, step 7,
    // wall_time 1700000000.25.
    let expected_payload = "0900001040fc54d94110072a130a110a0a747261696e2f6c6f7373150000c03f";
    let header_len = EventWriter::new(Vec::new(), 1.0)
        .unwrap()
        .into_inner()
        .len();
    let mut writer = EventWriter::new(Vec::new(), 1.0).unwrap();
    writer.scalar("train/loss", 1.5, 7, 1700000000.25).unwrap();
    let bytes = writer.into_inner();
    let record = &bytes[header_len..];
    let hex: String = record[12..record.len() - 4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, expected_payload);
    assert_eq!(u64::from_le_bytes(record[..8].try_into().unwrap()), 32);
}

#[test]
fn crc32c_check_value() {
    // The CRC-32C check value from the Castagnoli/iSCSI spec (RFC 3720 appendix B.4 lists
    // it for "123456789").
    assert_eq!(bora_train::crc32c(b"123456789"), 0xE306_9283);
}

fn peft_case(name: &str) -> (Value, Value) {
    (
        load(&format!("peft/{name}/adapter_config.json")),
        load(&format!("peft/{name}/tensors.json")),
    )
}

#[test]
fn adapter_config_matches_peft() {
    for (case, targets, rank, alpha, dropout, rslora) in [
        ("all7_r8", LoraTarget::ALL.to_vec(), 8, 16.0, 0.05, false),
        (
            "qv_r4_rslora",
            vec![LoraTarget::Q, LoraTarget::V],
            4,
            8.0,
            0.0,
            true,
        ),
    ] {
        let (peft, _) = peft_case(case);
        let ours = AdapterConfig {
            base_model_name_or_path: Some("tiny/mistral".into()),
            rank,
            alpha,
            dropout,
            targets: targets.clone(),
            rslora,
        };
        let json = ours.to_json();
        for (key, value) in json.as_object().unwrap() {
            let theirs = &peft[key];
            if key == "target_modules" {
                let mut t: Vec<&str> = theirs
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                t.sort_unstable();
                assert_eq!(value, &serde_json::json!(t), "{case}: target_modules");
            } else {
                assert_eq!(value, theirs, "{case}: key `{key}`");
            }
        }
        let back = AdapterConfig::from_json(&peft).unwrap();
        assert_eq!(back, ours, "{case}: reading peft's file");
    }
}

#[test]
fn tensor_names_match_peft() {
    for (case, targets) in [
        ("all7_r8", LoraTarget::ALL.to_vec()),
        ("qv_r4_rslora", vec![LoraTarget::Q, LoraTarget::V]),
    ] {
        let (_, tensors) = peft_case(case);
        let mut theirs: Vec<&str> = tensors["tensors"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        theirs.sort_unstable();
        let mut ours = Vec::new();
        for layer in 0..2 {
            for &t in &targets {
                for m in [LoraPart::A, LoraPart::B] {
                    ours.push(t.peft_name(layer, m));
                }
            }
        }
        ours.sort_unstable();
        assert_eq!(ours, theirs, "{case}");
        assert_eq!(tensors["metadata"], serde_json::json!({"format": "pt"}));
    }
}

#[test]
fn run_config_adapter_settings_feed_adapter_config() {
    let cfg = RunConfig::from_toml(
        "[model]\npath = \"tiny/mistral\"\n[data]\ntrain = \"t.jsonl\"\n\
         [lora]\nrank = 4\nalpha = 8\ndropout = 0.0\ntargets = [\"q\", \"v\"]\nrslora = true\n",
    )
    .unwrap();
    let (peft, _) = peft_case("qv_r4_rslora");
    assert_eq!(
        cfg.adapter_config(),
        AdapterConfig::from_json(&peft).unwrap()
    );
    assert!((cfg.adapter_config().scale() - 4.0).abs() < 1e-12);
}

/// Writes a TensorBoard file through [`TensorBoardSink`] into `$BORA_TRAIN_EVENTS_OUT`, for
/// `scripts/make_train_fixtures.py` to read back with tensorboard's own reader (the proof
/// that TensorBoard can read bora's files, run where tensorboard is installed).
#[test]
#[ignore = "run by scripts/make_train_fixtures.py"]
fn write_events_for_tensorboard_reader() {
    use bora_train::{MetricSink, Metrics, TensorBoardSink};
    let dir = std::env::var("BORA_TRAIN_EVENTS_OUT").expect("set BORA_TRAIN_EVENTS_OUT");
    let mut sink = TensorBoardSink::create(&dir).unwrap();
    for step in 1..=3u64 {
        sink.log(&Metrics {
            step,
            loss: 4.0 / step as f32,
            lr: 1e-4 * step as f64,
            grad_norm: 0.5 + step as f32,
            tokens_per_s: 1000.0 * step as f64,
            processed_tokens_per_s: 2000.0 * step as f64,
            val_loss: (step == 3).then_some(1.25),
        })
        .unwrap();
    }
    sink.flush().unwrap();
}
