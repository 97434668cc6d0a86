//! Metrics on each kind's edge cases, and Wilson intervals against an independent
//! computation (inverting the score test by bisection).

use bora_eval::{wilson, Metric, Z95};

fn metric(spec: &str) -> Metric {
    spec.parse().unwrap()
}

#[test]
fn exact_trims_whitespace_only() {
    let m = metric("exact");
    assert!(m.score("  Paris\n", "Paris"));
    assert!(m.score("Paris", " Paris "));
    assert!(!m.score("paris", "Paris"));
    assert!(!m.score("Paris.", "Paris"));
    assert!(!m.score("", "Paris"));
}

#[test]
fn json_compares_values_and_unparsable_answers_score_zero() {
    let m = metric("json");
    assert!(m.score(r#"{ "b": [1, 2], "a": "x" }"#, r#"{"a":"x","b":[1,2]}"#));
    assert!(!m.score(r#"{"a":"x","b":[2,1]}"#, r#"{"a":"x","b":[1,2]}"#));
    assert!(!m.score(r#"{"a":"x"}"#, r#"{"a":"x","b":1}"#));
    assert!(!m.score(r#"{"a":"x""#, r#"{"a":"x"}"#));
    assert!(!m.score("Sure! {\"a\": \"x\"}", r#"{"a":"x"}"#));
    assert!(m.score("\n[1, null, true]\n", "[1,null,true]"));
    assert!(m.check_expected("not json").is_err());
    assert!(m.check_expected(r#"{"a":1}"#).is_ok());
}

#[test]
fn contains_finds_the_trimmed_expected_text() {
    let m = metric("contains");
    assert!(m.score("The answer is 42.", " 42 "));
    assert!(!m.score("The answer is 4 2.", "42"));
    assert!(!m.score("", "42"));
}

#[test]
fn regex_must_match_the_whole_trimmed_answer() {
    let m = metric(r"regex:\d{3}-\d{4}");
    assert!(m.score(" 555-1234\n", "ignored"));
    assert!(!m.score("call 555-1234", "ignored"));
    assert!(!m.score("555-12345", "ignored"));
    // An alternation is anchored as a whole, not only its first and last branch.
    let alt = metric("regex:yes|no");
    assert!(alt.score("no", ""));
    assert!(!alt.score("yesno", ""));
    assert!(!alt.score("no thanks", ""));
    assert_eq!(alt.to_string(), "regex:yes|no");
}

#[test]
fn choice_needs_a_label_equal_to_the_expected_one() {
    let m = metric("choice:A, B,C");
    assert!(m.score(" B\n", "B"));
    assert!(!m.score("B.", "B"));
    assert!(!m.score("C", "B"));
    assert!(!m.score("The answer is B", "B"));
    assert!(m.check_expected("D").is_err());
    assert!(m.check_expected("A").is_ok());
    assert_eq!(m.to_string(), "choice:A,B,C");
}

#[test]
fn bad_metric_specs_are_rejected_with_the_reason() {
    for (spec, why) in [
        ("regex:(", "does not compile"),
        ("regex", "needs an argument"),
        ("choice", "needs an argument"),
        ("choice:A,,B", "non-empty"),
        ("exact:x", "takes no argument"),
        ("bleu", "unknown metric"),
    ] {
        let err = spec.parse::<Metric>().unwrap_err().to_string();
        assert!(err.contains(spec) && err.contains(why), "{spec}: {err}");
    }
}

/// The Wilson interval is the set of p whose score test |p̂ − p| / sqrt(p(1−p)/n) ≤ z does
/// not reject; find its two ends by bisection on each side of p̂.
fn score_test_interval(k: usize, n: usize, z: f64) -> (f64, f64) {
    let phat = k as f64 / n as f64;
    let stat = |p: f64| (phat - p).abs() / (p * (1.0 - p) / n as f64).sqrt();
    let bisect = |mut inside: f64, mut outside: f64| {
        for _ in 0..200 {
            let mid = 0.5 * (inside + outside);
            if stat(mid) <= z {
                inside = mid;
            } else {
                outside = mid;
            }
        }
        inside
    };
    let lo = if k == 0 { 0.0 } else { bisect(phat, 0.0) };
    let hi = if k == n { 1.0 } else { bisect(phat, 1.0) };
    (lo, hi)
}

#[test]
fn wilson_matches_the_inverted_score_test() {
    for (k, n) in [
        (0, 10),
        (1, 10),
        (5, 10),
        (10, 10),
        (37, 200),
        (183, 200),
        (1, 1),
        (0, 1),
    ] {
        let (lo, hi) = wilson(k, n, Z95);
        let (rlo, rhi) = score_test_interval(k, n, Z95);
        assert!(
            (lo - rlo).abs() < 1e-9 && (hi - rhi).abs() < 1e-9,
            "{k}/{n}: {lo} {hi} vs {rlo} {rhi}"
        );
        let p = k as f64 / n as f64;
        assert!(lo <= p && p <= hi);
    }
    assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
}

#[test]
fn tool_call_compares_names_and_arguments_as_values() {
    let m: Metric = "tool_call".parse().unwrap();
    let expected =
        r#"[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]"#;
    // Mistral's output after [TOOL_CALLS]: key order, spacing and the id do not matter.
    assert!(m.score(
        r#"[{"name": "get_weather", "arguments": {"unit": "celsius", "city": "Paris"}, "id": "abcDEF123"}]"#,
        expected
    ));
    // Arguments as JSON text, and Hermes-style blocks.
    assert!(m.score(
        r#"{"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}"#,
        expected
    ));
    assert!(m.score(
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>",
        expected
    ));
    assert!(!m.score(
        r#"[{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}]"#,
        expected
    ));
    assert!(!m.score(
        r#"[{"name": "get_time", "arguments": {"city": "Paris", "unit": "celsius"}}]"#,
        expected
    ));
    assert!(!m.score("It is sunny in Paris.", expected));
    assert!(m.check_expected("plain text").is_err());
    assert_eq!(m.to_string(), "tool_call");
}

#[test]
fn inferred_metric_follows_the_expected_answers() {
    let json = [r#"{"a": 1}"#, "[1, 2]", r#" {"b": "x"} "#];
    assert_eq!(Metric::infer(&json).to_string(), "json");
    // A bare number is JSON but not a structure: exact.
    assert_eq!(Metric::infer(&["1", "2", "3"]).to_string(), "exact");
    let classes = ["billing", "outage", "billing", "refund", "outage", "refund"];
    assert_eq!(
        Metric::infer(&classes).to_string(),
        "choice:billing,outage,refund"
    );
    // Every answer different: not a class list.
    let free = ["a cat sat", "the dog ran", "birds fly south"];
    assert_eq!(Metric::infer(&free).to_string(), "exact");
    // Long answers are not labels even when repeated.
    let long = ["one two three four", "one two three four", "x", "x"];
    assert_eq!(Metric::infer(&long).to_string(), "exact");
    assert_eq!(Metric::infer::<&str>(&[]).to_string(), "exact");
}
