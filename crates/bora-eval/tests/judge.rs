//! The pairwise judge with scripted judges: position bias must cancel, verdicts are read
//! strictly (one retry, then invalid), the cache answers a rerun, scores are averaged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bora_eval::{
    judge, JudgeConfig, JudgeMode, JudgeModel, JudgeScores, Outcome, SampleRow, Winner,
};

/// A judge whose reply is a function of the conversation it is shown.
struct Scripted<F> {
    reply: F,
    calls: AtomicUsize,
    seen: Mutex<Vec<Vec<(String, String)>>>,
}

impl<F: Fn(&[(&str, &str)]) -> String + Sync> JudgeModel for Scripted<F> {
    fn name(&self) -> &str {
        "scripted"
    }
    fn ask(&self, messages: &[(&str, &str)]) -> Result<String, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.seen.lock().unwrap().push(
            messages
                .iter()
                .map(|(r, c)| (r.to_string(), c.to_string()))
                .collect(),
        );
        Ok((self.reply)(messages))
    }
}

fn scripted<F: Fn(&[(&str, &str)]) -> String + Sync>(reply: F) -> Scripted<F> {
    Scripted {
        reply,
        calls: AtomicUsize::new(0),
        seen: Mutex::new(Vec::new()),
    }
}

/// (A, B, reference) from a pairwise request, or (answer, "", reference) from a score one.
fn shown(user: &str) -> (String, String, String) {
    let section = |name: &str| {
        user.split(&format!("# {name}\n\n"))
            .nth(1)
            .map(|s| s.split("\n\n# ").next().unwrap().to_owned())
            .unwrap_or_default()
    };
    if user.contains("# Answer A") {
        (
            section("Answer A"),
            section("Answer B"),
            section("Reference answer"),
        )
    } else {
        (
            section("Answer"),
            String::new(),
            section("Reference answer"),
        )
    }
}

fn verdict(winner: &str, reason: &str) -> String {
    serde_json::json!({"reason": reason, "winner": winner}).to_string()
}

/// Ten examples: the tuned answer is right on 0..7, the base answer on 5..10.
fn samples() -> Vec<SampleRow> {
    (0..10)
        .map(|i| {
            let right = format!("answer {i}");
            SampleRow {
                line: i + 1,
                prompt: format!("question {i}"),
                expected: right.clone(),
                base: if i >= 5 {
                    right.clone()
                } else {
                    format!("wrong {i}")
                },
                tuned: Some(if i < 7 {
                    right.clone()
                } else {
                    format!("bad {i}")
                }),
                base_score: 0.0,
                tuned_score: None,
                base_usage: None,
                tuned_usage: None,
                deployed: None,
                deployed_score: None,
                judge: None,
            }
        })
        .collect()
}

fn config(dir: &std::path::Path, mode: JudgeMode) -> JudgeConfig {
    JudgeConfig {
        mode,
        rubric: Some("Agree with the reference.".into()),
        concurrency: 3,
        cache: dir.join("judge-cache.jsonl"),
    }
}

/// Prefers the answer that equals the reference; a tie when both or neither do.
fn oracle(m: &[(&str, &str)]) -> String {
    let (a, b, r) = shown(m[1].1);
    match (a == r, b == r) {
        (true, false) => verdict("A", "A matches the reference"),
        (false, true) => verdict("B", "B matches the reference"),
        _ => verdict("tie", "same"),
    }
}

#[test]
fn a_judge_that_always_prefers_the_first_answer_gives_ties() {
    let dir = tempfile::tempdir().unwrap();
    let j = scripted(|_| verdict("A", "the first one"));
    let r = judge(&mut samples(), &j, &config(dir.path(), JudgeMode::Pairwise)).unwrap();
    assert_eq!(
        (r.win.count, r.tie.count, r.loss.count, r.invalid),
        (0, 10, 0, 0)
    );
    assert_eq!(r.tie.rate, 1.0);
    // Examples 5 and 6 have the same answer on both sides: their second order is the same
    // request as the first, answered from the cache.
    assert_eq!(j.calls.load(Ordering::Relaxed), 18);
    assert_eq!((r.requests, r.cached), (18, 2));
}

#[test]
fn a_fair_judge_counts_wins_ties_and_losses_with_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let j = scripted(oracle);
    let mut rows = samples();
    let r = judge(&mut rows, &j, &config(dir.path(), JudgeMode::Pairwise)).unwrap();
    // Tuned right and base wrong on 0..5: wins; both right on 5..7: ties; base right and
    // tuned wrong on 7..10: losses.
    assert_eq!((r.win.count, r.tie.count, r.loss.count), (5, 2, 3));
    // Each row carries its own verdict: the outcome and the winner in each order.
    for (i, row) in rows.iter().enumerate() {
        let (outcome, winner) = match i {
            0..5 => (Outcome::Win, Winner::Tuned),
            5..7 => (Outcome::Tie, Winner::Tie),
            _ => (Outcome::Loss, Winner::Base),
        };
        let verdict = row.judge.as_ref().unwrap();
        assert_eq!(verdict.outcome, outcome, "line {}", row.line);
        assert_eq!(
            (verdict.base_first, verdict.tuned_first),
            (Some(winner), Some(winner))
        );
        assert_eq!(verdict.reasons.len(), 2);
        assert_eq!(verdict.scores, None);
    }
    assert_eq!(Outcome::Win.for_base(), Outcome::Loss);
    assert_eq!(Outcome::Tie.for_base(), Outcome::Tie);
    // The verdict is part of the row as `samples.jsonl` holds it.
    let line: serde_json::Value = serde_json::to_value(&rows[0]).unwrap();
    assert_eq!(line["judge"]["outcome"], "win");
    assert_eq!(line["judge"]["base_first"], "tuned");
    assert_eq!(r.win.rate, 0.5);
    let (lo, hi) = bora_eval::wilson(5, 10, bora_eval::Z95);
    assert_eq!(r.win.ci95, [lo, hi]);
    // Every request showed the prompt, the reference and the rubric, in both orders.
    let seen = j.seen.lock().unwrap();
    let mut orders = std::collections::HashSet::new();
    for m in seen.iter() {
        assert!(m[0].1.contains("Agree with the reference."));
        let (a, b, reference) = shown(&m[1].1);
        assert!(reference.starts_with("answer "));
        orders.insert((a, b));
    }
    for s in samples() {
        let t = s.tuned.clone().unwrap();
        assert!(orders.contains(&(s.base.clone(), t.clone())));
        assert!(orders.contains(&(t, s.base.clone())));
    }
    assert_eq!(r.samples.iter().filter(|s| s.outcome == "win").count(), 3);
    assert_eq!(r.samples.iter().filter(|s| s.outcome == "loss").count(), 3);
    assert!(r.samples[0].reasons[0].contains("matches the reference"));

    let md = bora_eval::judge_markdown(&r);
    assert!(md.contains("| win | 50.0% |"), "{md}");
}

#[test]
fn unreadable_verdicts_are_asked_again_once_then_invalid() {
    let dir = tempfile::tempdir().unwrap();
    // Prose first; the JSON after the reminder on even lines only.
    let j = scripted(|m: &[(&str, &str)]| {
        let even = m[1].1.contains("question 0") || m[1].1.contains("question 2");
        if m.len() == 4 && even {
            oracle(&m[..2])
        } else {
            "I think A is better.".to_owned()
        }
    });
    let mut s = samples();
    s.truncate(4);
    let r = judge(&mut s, &j, &config(dir.path(), JudgeMode::Pairwise)).unwrap();
    assert_eq!((r.valid, r.invalid), (2, 2));
    let invalid = s[1].judge.as_ref().unwrap();
    assert_eq!(invalid.outcome, Outcome::Invalid);
    assert_eq!((invalid.base_first, invalid.tuned_first), (None, None));
    assert!(invalid.reasons.is_empty());
    assert_eq!(s[0].judge.as_ref().unwrap().outcome, Outcome::Win);
    assert_eq!(r.win.count, 2);
    assert_eq!(r.win.rate, 1.0);
    assert_eq!(j.calls.load(Ordering::Relaxed), 16, "two tries per order");
    let retry = j
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|m| m.len() == 4)
        .cloned()
        .unwrap();
    assert_eq!(
        retry[2],
        ("assistant".into(), "I think A is better.".into())
    );
}

#[test]
fn a_rerun_reads_every_verdict_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), JudgeMode::Score);
    let scorer = |m: &[(&str, &str)]| {
        if m[1].1.contains("# Answer A") {
            return oracle(m);
        }
        let (a, _, r) = shown(m[1].1);
        let score = if a == r { 8 } else { 3 };
        serde_json::json!({"reason": "graded", "score": score}).to_string()
    };
    let mut rows = samples();
    let first = judge(&mut rows, &scripted(scorer), &cfg).unwrap();
    // Example 0: the tuned answer is the reference (8), the base answer is not (3).
    assert_eq!(
        rows[0].judge.as_ref().unwrap().scores,
        Some(JudgeScores { base: 3, tuned: 8 })
    );
    // 10 examples × (2 orders + 2 scores), less the repeats of examples 5 and 6 (same
    // answer on both sides).
    assert_eq!((first.requests, first.cached), (36, 4));
    let b = first.base_score.clone().unwrap();
    let t = first.tuned_score.clone().unwrap();
    assert_eq!((b.mean, t.mean, b.n), (5.5, 6.5, 10));

    let never = scripted(|_| panic!("the cache answers"));
    let again = judge(&mut samples(), &never, &cfg).unwrap();
    assert_eq!((again.requests, again.cached), (0, 40));
    assert_eq!(again.samples, first.samples);
    assert_eq!(again.win, first.win);
    assert_eq!(again.tuned_score, first.tuned_score);

    // Another rubric is another request.
    let mut other = cfg.clone();
    other.rubric = Some("Be brief.".into());
    let counted = scripted(scorer);
    judge(&mut samples()[..1], &counted, &other).unwrap();
    assert_eq!(counted.calls.load(Ordering::Relaxed), 4);
}

#[test]
fn judging_needs_a_tuned_answer_and_stops_on_a_service_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = samples();
    s[3].tuned = None;
    let e = judge(
        &mut s,
        &scripted(oracle),
        &config(dir.path(), JudgeMode::Pairwise),
    )
    .unwrap_err();
    assert!(e.to_string().contains("line 4"), "{e}");

    struct Down;
    impl JudgeModel for Down {
        fn name(&self) -> &str {
            "down"
        }
        fn ask(&self, _: &[(&str, &str)]) -> Result<String, String> {
            Err("401: check MISTRAL_API_KEY".into())
        }
    }
    let e = judge(
        &mut samples(),
        &Down,
        &config(dir.path(), JudgeMode::Pairwise),
    )
    .unwrap_err();
    assert!(e.to_string().contains("check MISTRAL_API_KEY"), "{e}");
}
