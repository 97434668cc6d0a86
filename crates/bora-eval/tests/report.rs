//! Report files: all four written, the HTML self-contained and escaped, the run's curves read
//! from `metrics.jsonl`, and eval scalars logged back to the run without breaking it.

use std::path::Path;

use bora_eval::{
    log_to_run, render_html, render_markdown, wilson, write_eval_dir, EvalResults, RunInfo,
    SampleRow, SamplingRecord, SideScore, REPORT_HTML, REPORT_MD, RESULTS_FILE, SAMPLES_FILE, Z95,
};

fn side(correct: usize, n: usize) -> SideScore {
    let (lo, hi) = wilson(correct, n, Z95);
    SideScore {
        score: correct as f64 / n as f64,
        correct,
        ci95: [lo, hi],
        nll: 1.5,
        ppl: 1.5f64.exp(),
    }
}

fn sample(line: usize, base: f64, tuned: f64) -> SampleRow {
    SampleRow {
        line,
        prompt: format!("<script>alert({line})</script> see https://example.com"),
        expected: "{\"a\": 1}".into(),
        base: "no".into(),
        tuned: Some("{\"a\": 1}".into()),
        base_score: base,
        tuned_score: Some(tuned),
        base_usage: None,
        tuned_usage: None,
        deployed: None,
        deployed_score: None,
        judge: None,
    }
}

fn results(samples: &[SampleRow]) -> EvalResults {
    let count = |f: &dyn Fn(&SampleRow) -> f64| samples.iter().map(f).sum::<f64>() as usize;
    EvalResults {
        metric: "json".into(),
        n: samples.len(),
        base: side(count(&|s| s.base_score), samples.len()),
        tuned: Some(side(count(&|s| s.tuned_score.unwrap()), samples.len())),
        model: "model.gguf".into(),
        adapter: Some("runs/x/adapter".into()),
        data: "test.jsonl".into(),
        eval_seconds: 1.0,
        sampling: None,
        judge: None,
        deployed: None,
    }
}

fn write_run(dir: &Path) {
    std::fs::write(
        dir.join("config.toml"),
        "name = \"x\"\n[optim]\nlr = 0.001\n",
    )
    .unwrap();
    let mut metrics = String::new();
    for step in 1..=20u64 {
        let val = if step % 10 == 0 {
            format!(",\"val_loss\":{}", 1.0 / step as f64)
        } else {
            String::new()
        };
        metrics.push_str(&format!(
            "{{\"step\":{step},\"loss\":{},\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":10.0{val}}}\n",
            2.0 / step as f64
        ));
    }
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    std::fs::write(
        dir.join("timing.json"),
        r#"{"steps":20,"train_seconds":40.0,"seconds_per_step":2.0}"#,
    )
    .unwrap();
}

#[test]
fn report_files_are_written_and_self_contained() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path());
    let info = RunInfo::load(tmp.path()).unwrap();
    assert_eq!(info.train_loss.len(), 20);
    assert_eq!(info.val_loss, vec![(10, 0.1), (20, 0.05)]);
    assert_eq!(info.timing.as_ref().unwrap().steps, 20);

    let samples: Vec<SampleRow> = (1..=12)
        .map(|i| sample(i, (i % 4 == 0) as u8 as f64, (i % 6 != 0) as u8 as f64))
        .collect();
    let r = results(&samples);
    let out = tmp.path().join("eval");
    let html_path = write_eval_dir(&out, &r, &samples, Some(&info)).unwrap();
    assert_eq!(html_path, out.join(REPORT_HTML));
    for f in [RESULTS_FILE, SAMPLES_FILE, REPORT_MD, REPORT_HTML] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let back: EvalResults =
        serde_json::from_str(&std::fs::read_to_string(out.join(RESULTS_FILE)).unwrap()).unwrap();
    assert_eq!(back, r);
    let rows: Vec<SampleRow> = std::fs::read_to_string(out.join(SAMPLES_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows, samples);

    let html = std::fs::read_to_string(&html_path).unwrap();
    // Offline: no URL the browser would fetch, no script; user text is escaped, so the
    // sample's own "https://" only appears as text inside escaped markup.
    assert!(!html.contains("<script"), "unescaped script");
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "external reference"
    );
    let without_samples = html.replace("see https://example.com", "");
    assert!(!without_samples.contains("http://") && !without_samples.contains("https://"));
    assert!(html.contains("&lt;script&gt;"));
    assert!(
        html.contains("<svg") && html.contains("polyline"),
        "charts inline"
    );
    assert!(html.contains("Fixed by tuning") && html.contains("Broken by tuning"));
    assert!(html.contains("lr = 0.001"), "run config shown");

    let md = std::fs::read_to_string(out.join(REPORT_MD)).unwrap();
    assert!(md.contains("| base |") && md.contains("| tuned |"));
    assert!(md.contains(&format!(
        "{:.1}%",
        100.0 * r.tuned.as_ref().unwrap().ci95[0]
    )));
    assert!(md.contains("Trained 20 steps"));
}

#[test]
fn a_report_without_a_run_or_adapter_shows_the_base_misses() {
    let samples: Vec<SampleRow> = (1..=3)
        .map(|i| SampleRow {
            tuned: None,
            tuned_score: None,
            ..sample(i, 0.0, 0.0)
        })
        .collect();
    let mut r = results(&[sample(1, 0.0, 0.0)]);
    r.tuned = None;
    let html = render_html(&r, &samples, None);
    assert!(html.contains("Missed by the model") && !html.contains("tuned <code>"));
}

#[test]
fn a_sampled_evaluation_is_recorded_and_labelled_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = [sample(1, 0.0, 1.0), sample(2, 1.0, 1.0)];
    let greedy = results(&samples);
    assert!(render_markdown(&greedy, &samples, None).contains("greedy decoding"));
    let mut r = greedy.clone();
    r.sampling = Some(SamplingRecord {
        temperature: 0.7,
        top_k: 0,
        top_p: 0.9,
        min_p: 0.0,
        repeat_penalty: 1.0,
        seed: 42,
    });
    write_eval_dir(tmp.path(), &r, &samples, None).unwrap();
    let text = std::fs::read_to_string(tmp.path().join(RESULTS_FILE)).unwrap();
    let back: EvalResults = serde_json::from_str(&text).unwrap();
    assert_eq!(back.sampling, r.sampling);
    for report in [REPORT_MD, REPORT_HTML] {
        let text = std::fs::read_to_string(tmp.path().join(report)).unwrap();
        assert!(
            text.contains("sampled decoding (temperature 0.7") && text.contains("seed 42"),
            "{report}"
        );
    }
}

#[test]
fn eval_scalars_go_to_the_run_and_keep_its_metrics_readable() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path());
    let r = results(&[sample(1, 0.0, 1.0), sample(2, 1.0, 1.0)]);
    log_to_run(tmp.path(), &r, 20).unwrap();
    let metrics = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 20);
    assert_eq!(last["eval/tuned/score"], 1.0);
    assert_eq!(last["eval/base/score"], 0.5);
    // The curves still hold only training steps.
    assert_eq!(RunInfo::load(tmp.path()).unwrap().train_loss.len(), 20);
    let events: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    assert_eq!(events.len(), 1);
    let bytes = std::fs::read(events[0].path()).unwrap();
    let has = |tag: &str| bytes.windows(tag.len()).any(|w| w == tag.as_bytes());
    assert!(has("eval/tuned/score") && has("eval/base/nll"));
}
