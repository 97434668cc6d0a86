//! The evaluation report in two forms: Markdown for a model card, and one self-contained HTML
//! page (inline SVG charts and CSS, no scripts, no network) that opens offline anywhere.
//! Spoken answers, when asked for, go into the page as `data:` URIs for the same reason: the
//! page stays one file that can be mailed, uploaded or opened from anywhere.

use std::fmt::Write;

use bora_run::Timing;

use crate::eval::{EvalResults, SampleRow, SideScore};

/// What a report shows about the training run behind the adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub name: String,
    pub config_toml: String,
    /// (step, loss) per optimizer step.
    pub train_loss: Vec<(u64, f64)>,
    /// (step, validation loss) where validation ran.
    pub val_loss: Vec<(u64, f64)>,
    pub timing: Option<Timing>,
}

/// Examples shown per "fixed" / "broken" list.
const SHOWN: usize = 5;

/// One example's answers read aloud (MP3), for the HTML report's audio players.
#[derive(Debug, Clone, PartialEq)]
pub struct SpokenSample {
    /// The example's line in the data file.
    pub line: usize,
    pub base: Vec<u8>,
    pub tuned: Option<Vec<u8>>,
}

/// The `n` examples worth hearing: those tuning fixed, then those it broke, then the others
/// where the two answers differ, then the rest, each group in file order.
pub fn samples_to_speak(samples: &[SampleRow], n: usize) -> Vec<&SampleRow> {
    let rank = |s: &SampleRow| match (s.base_score, s.tuned_score) {
        (b, Some(t)) if b < 1.0 && t == 1.0 => 0,
        (b, Some(t)) if b == 1.0 && t == 0.0 => 1,
        _ if s.tuned.as_ref().is_some_and(|t| *t != s.base) => 2,
        _ => 3,
    };
    let mut ranked: Vec<&SampleRow> = samples.iter().collect();
    ranked.sort_by_key(|s| rank(s));
    ranked.truncate(n);
    ranked
}

/// The first [`SHOWN`] samples `f` accepts.
fn pick(samples: &[SampleRow], f: impl Fn(&SampleRow) -> bool) -> Vec<&SampleRow> {
    samples.iter().filter(|s| f(s)).take(SHOWN).collect()
}

/// The examples that say most about what tuning did: those it fixed (base wrong, tuned right)
/// and those it broke (base right, tuned wrong). Without an adapter: the base model's misses.
/// With a deployed copy, also those where it scored otherwise than the local model.
fn instructive(samples: &[SampleRow]) -> Vec<(&'static str, Vec<&SampleRow>)> {
    let mut lists = instructive_local(samples);
    if samples.iter().any(|s| s.deployed_score.is_some()) {
        lists.push((
            "Deployed model scored differently",
            pick(samples, |s| {
                s.deployed_score.is_some() && s.deployed_score != Some(local_score(s))
            }),
        ));
    }
    lists
}

/// The score of the local model a deployment was made from: the tuned one, else the base.
fn local_score(s: &SampleRow) -> f64 {
    s.tuned_score.unwrap_or(s.base_score)
}

fn instructive_local(samples: &[SampleRow]) -> Vec<(&'static str, Vec<&SampleRow>)> {
    if samples.iter().any(|s| s.tuned.is_some()) {
        vec![
            (
                "Fixed by tuning",
                pick(samples, |s| {
                    s.base_score < 1.0 && s.tuned_score == Some(1.0)
                }),
            ),
            (
                "Broken by tuning",
                pick(samples, |s| {
                    s.base_score == 1.0 && s.tuned_score == Some(0.0)
                }),
            ),
        ]
    } else {
        vec![("Missed by the model", pick(samples, |s| s.base_score < 1.0))]
    }
}

/// One row of the score table: a local side, or the deployed copy (which has no NLL).
struct SideRow {
    name: &'static str,
    score: f64,
    ci95: [f64; 2],
    correct: usize,
    /// Answer NLL and perplexity, for the sides that run here.
    nll: Option<(f64, f64)>,
}

fn sides(r: &EvalResults) -> Vec<SideRow> {
    let local = |name, s: &SideScore| SideRow {
        name,
        score: s.score,
        ci95: s.ci95,
        correct: s.correct,
        nll: Some((s.nll, s.ppl)),
    };
    let mut out = vec![local("base", &r.base)];
    out.extend(r.tuned.as_ref().map(|t| local("tuned", t)));
    out.extend(r.deployed.as_ref().map(|d| SideRow {
        name: "deployed",
        score: d.score,
        ci95: d.ci95,
        correct: d.correct,
        nll: None,
    }));
    out
}

/// How the answers were drawn, with every sampling setting when they were not plainly
/// greedy: a sampled score is only comparable with one sampled the same way.
fn decoding(r: &EvalResults) -> String {
    match &r.sampling {
        None => "greedy decoding".into(),
        Some(s) => format!(
            "{} decoding (temperature {}, top-k {}, top-p {}, min-p {}, repeat penalty {}, seed {})",
            if s.temperature > 0.0 { "sampled" } else { "greedy" },
            s.temperature,
            s.top_k,
            s.top_p,
            s.min_p,
            s.repeat_penalty,
            s.seed
        ),
    }
}

/// The score table in Markdown, one row per side. The report and the Hub model card both
/// show it, so a card can never disagree with the report it was made from.
pub fn score_table(r: &EvalResults) -> String {
    let mut md = String::new();
    md.push_str("| model | score | 95% CI (Wilson) | correct | answer NLL | answer PPL |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|\n");
    for s in sides(r) {
        let (nll, ppl) = nll_cells(&s);
        let _ = writeln!(
            md,
            "| {} | {} | {} – {} | {}/{} | {nll} | {ppl} |",
            s.name,
            pct(s.score),
            pct(s.ci95[0]),
            pct(s.ci95[1]),
            s.correct,
            r.n,
        );
    }
    if let Some(d) = &r.deployed {
        let _ = writeln!(md, "\nDeployed: `{}`.", md_code(&d.model));
    }
    md
}

/// The NLL and PPL cells of a row; a dash for the deployed side.
fn nll_cells(s: &SideRow) -> (String, String) {
    match s.nll {
        Some((nll, ppl)) => (format!("{nll:.3}"), format!("{ppl:.2}")),
        None => ("–".into(), "–".into()),
    }
}

/// The evaluation as a model card shows it: what was measured, how answers were drawn, and
/// the score table.
pub fn card_section(r: &EvalResults) -> String {
    let mut card = format!(
        "Metric `{}` on {} held-out examples, {}, base model against the fine-tune.\n\n{}",
        r.metric,
        r.n,
        decoding(r),
        score_table(r)
    );
    if let Some(j) = &r.judge {
        card.push('\n');
        card.push_str(&crate::judge::judge_markdown(j));
    }
    card
}

/// The training and validation loss chart as a standalone SVG file (namespace and a white
/// background, so it renders as an image on light and dark pages); `None` without losses.
pub fn loss_chart_svg(info: &RunInfo) -> Option<String> {
    if info.train_loss.is_empty() {
        return None;
    }
    let svg = loss_svg(&info.train_loss, &info.val_loss);
    let head_end = svg.find('>')? + 1;
    Some(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" {}<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>{}\n",
        &svg["<svg ".len()..head_end],
        &svg[head_end..]
    ))
}

/// The run's name, else the adapter's or the model's file name.
fn title(r: &EvalResults, run: Option<&RunInfo>) -> String {
    let file_name = |p: &str| {
        std::path::Path::new(p)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.to_string())
    };
    match (run, &r.adapter) {
        (Some(info), _) => info.name.clone(),
        (None, Some(adapter)) => file_name(adapter),
        (None, None) => file_name(&r.model),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn timing_line(t: &Timing) -> String {
    format!(
        "{} steps in {:.1} s ({:.2} s/step)",
        t.steps, t.train_seconds, t.seconds_per_step
    )
}

/// Markdown for a model card: score table, loss summary, examples, config and timings.
pub fn render_markdown(r: &EvalResults, samples: &[SampleRow], run: Option<&RunInfo>) -> String {
    let mut md = String::new();
    let title = title(r, run);
    let _ = writeln!(md, "# Evaluation: {title}\n");
    let _ = writeln!(
        md,
        "Metric `{}` on {} held-out examples of `{}`; {}. Base model `{}`{}.\n",
        r.metric,
        r.n,
        r.data,
        decoding(r),
        r.model,
        r.adapter
            .as_ref()
            .map(|a| format!(", adapter `{a}`"))
            .unwrap_or_default()
    );
    md.push_str(&score_table(r));
    if let Some(j) = &r.judge {
        md.push_str("\n## Judge\n\n");
        md.push_str(&crate::judge::judge_markdown(j));
    }
    if let Some(info) = run {
        md.push_str("\n## Training\n\n");
        if let Some(t) = &info.timing {
            let _ = writeln!(md, "Trained {}.\n", timing_line(t));
        }
        if !info.train_loss.is_empty() {
            md.push_str("| step | train loss | validation loss |\n|---:|---:|---:|\n");
            for &(step, loss) in thin(&info.train_loss, 10).iter() {
                let val = info
                    .val_loss
                    .iter()
                    .find(|v| v.0 == step)
                    .map(|v| format!("{:.4}", v.1))
                    .unwrap_or_default();
                let _ = writeln!(md, "| {step} | {loss:.4} | {val} |");
            }
        }
    }
    for (title, rows) in instructive(samples) {
        let _ = writeln!(md, "\n## {title} ({} shown)\n", rows.len());
        for s in rows {
            let _ = writeln!(md, "- line {}: prompt `{}`", s.line, md_code(&s.prompt));
            let _ = writeln!(md, "  - expected: `{}`", md_code(&s.expected));
            let _ = writeln!(md, "  - base: `{}`", md_code(&s.base));
            if let Some(t) = &s.tuned {
                let _ = writeln!(md, "  - tuned: `{}`", md_code(t));
            }
            if let Some(d) = &s.deployed {
                let _ = writeln!(md, "  - deployed: `{}`", md_code(d));
            }
        }
    }
    if let Some(info) = run {
        let _ = write!(md, "\n## Run config\n\n```toml\n{}```\n", info.config_toml);
    }
    let _ = writeln!(md, "\nEvaluation took {:.1} s.", r.eval_seconds);
    md
}

/// One line, inline-code safe: newlines shown as `⏎`, backticks as `'`.
fn md_code(s: &str) -> String {
    s.replace('\n', "⏎").replace('`', "'")
}

/// At most about `n` evenly spaced points, always keeping the last.
fn thin(points: &[(u64, f64)], n: usize) -> Vec<(u64, f64)> {
    let every = points.len().div_ceil(n).max(1);
    let mut out: Vec<_> = points.iter().copied().step_by(every).collect();
    if out.last() != points.last() {
        out.extend(points.last().copied());
    }
    out
}

pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
main{max-width:1100px;margin:0 auto;padding:28px 36px}\
h1{font-size:26px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px;color:#2a3350}\
.sub{color:#5b6478;font-size:14px;margin-bottom:18px}\
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin-bottom:16px}\
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}\
table{border-collapse:collapse;width:100%;font-size:14px}th,td{padding:6px 10px;text-align:left;border-bottom:1px solid #e6e8ee}\
th{color:#5b6478;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
.big{font-size:30px;font-weight:700}.base{color:#8a94a8}.tuned{color:#2f6fed}.deployed{color:#2fa36b}\
.ex{font-size:13px;border-left:3px solid #2fa36b;padding:8px 12px;margin:10px 0;background:#fafbfd;display:grid;grid-template-columns:72px 1fr;gap:4px 10px;align-items:baseline}\
.ex.bad{border-color:#d9534f}.ex .k{color:#5b6478;font-size:12px;font-weight:600}\
.ex code{background:#eef1f6;padding:2px 6px;border-radius:3px;white-space:pre-wrap;word-break:break-word;font-size:12px}\
pre{background:#1d2330;color:#e6e8ee;padding:12px;border-radius:8px;font-size:12px;overflow:auto}";

const BASE_COLOR: &str = "#9aa4b8";
const TUNED_COLOR: &str = "#2f6fed";
const DEPLOYED_COLOR: &str = "#2fa36b";

/// One self-contained HTML page.
pub fn render_html(r: &EvalResults, samples: &[SampleRow], run: Option<&RunInfo>) -> String {
    render_html_with_audio(r, samples, run, &[])
}

/// The answers of `spoken`, each beside an audio player that holds its speech.
fn spoken_html(h: &mut String, samples: &[SampleRow], spoken: &[SpokenSample]) {
    use base64::Engine as _;
    h.push_str("<h2>Spoken answers</h2><div class=\"card\">");
    for audio in spoken {
        let Some(s) = samples.iter().find(|s| s.line == audio.line) else {
            continue;
        };
        let _ = write!(
            h,
            "<div class=\"ex\"><span class=\"k\">line {}</span><span></span><span class=\"k\">prompt</span><code>{}</code>",
            s.line,
            esc(&s.prompt)
        );
        let answers = [
            ("base", Some(&s.base), Some(&audio.base)),
            ("tuned", s.tuned.as_ref(), audio.tuned.as_ref()),
        ];
        for (name, text, mp3) in answers {
            let (Some(text), Some(mp3)) = (text, mp3) else {
                continue;
            };
            let player = if mp3.is_empty() {
                "<i>nothing to read aloud</i>".to_owned()
            } else {
                format!(
                    "<audio controls preload=\"none\" src=\"data:audio/mpeg;base64,{}\"></audio>",
                    base64::engine::general_purpose::STANDARD.encode(mp3)
                )
            };
            let _ = write!(
                h,
                "<span class=\"k {name}\">{name}</span><div>{player}<br><code>{}</code></div>",
                esc(text)
            );
        }
        h.push_str("</div>");
    }
    h.push_str("</div>");
}

/// [`render_html`] with the answers of `spoken` read aloud in a section of their own.
pub fn render_html_with_audio(
    r: &EvalResults,
    samples: &[SampleRow],
    run: Option<&RunInfo>,
    spoken: &[SpokenSample],
) -> String {
    let mut h = String::new();
    let title = title(r, run);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>bora eval: {}</title><style>{CSS}</style></head><body><main>",
        esc(&title)
    );
    let _ = write!(
        h,
        "<h1>Evaluation: {}</h1><div class=\"sub\">metric <b>{}</b> on {} held-out examples · {} · base <code>{}</code>{}</div>",
        esc(&title),
        esc(&r.metric),
        r.n,
        decoding(r),
        esc(&r.model),
        r.adapter
            .as_ref()
            .map(|a| format!(" · adapter <code>{}</code>", esc(a)))
            .unwrap_or_default()
    );
    h.push_str("<div class=\"grid\"><div class=\"card\">");
    for s in sides(r) {
        let _ = write!(
            h,
            "<div style=\"display:inline-block;margin-right:36px\"><div class=\"sub\" style=\"margin:0\">{name}</div><div class=\"big {name}\">{}</div></div>",
            pct(s.score),
            name = s.name
        );
    }
    h.push_str("<table><tr><th>model</th><th>score</th><th>95% CI (Wilson)</th><th>correct</th><th>answer NLL</th><th>PPL</th></tr>");
    for s in sides(r) {
        let (nll, ppl) = nll_cells(&s);
        let _ = write!(
            h,
            "<tr><td class=\"{name}\"><b>{name}</b></td><td class=\"n\">{}</td><td class=\"n\">{} – {}</td><td class=\"n\">{}/{}</td><td class=\"n\">{nll}</td><td class=\"n\">{ppl}</td></tr>",
            pct(s.score),
            pct(s.ci95[0]),
            pct(s.ci95[1]),
            s.correct,
            r.n,
            name = s.name
        );
    }
    h.push_str("</table>");
    if let Some(d) = &r.deployed {
        let _ = write!(
            h,
            "<div class=\"sub\">deployed: <code>{}</code></div>",
            esc(&d.model)
        );
    }
    h.push_str("</div><div class=\"card\">");
    h.push_str(&bars_svg(r));
    h.push_str("</div></div>");
    if let Some(j) = &r.judge {
        h.push_str(&crate::judge::judge_html(j));
    }
    if let Some(info) = run {
        h.push_str("<h2>Training</h2><div class=\"card\">");
        if let Some(t) = &info.timing {
            let _ = write!(h, "<div class=\"sub\">trained {}</div>", timing_line(t));
        }
        h.push_str(&loss_svg(&info.train_loss, &info.val_loss));
        h.push_str("</div>");
    }
    if !spoken.is_empty() {
        spoken_html(&mut h, samples, spoken);
    }
    for (title, rows) in instructive(samples) {
        let _ = write!(h, "<h2>{title}</h2><div class=\"card\">");
        if rows.is_empty() {
            h.push_str("<div class=\"sub\">none</div>");
        }
        for s in rows {
            let bad = if title.starts_with("Fixed") {
                ""
            } else {
                " bad"
            };
            let field = |h: &mut String, key: &str, value: &str| {
                let _ = write!(
                    h,
                    "<span class=\"k\">{key}</span><code>{}</code>",
                    esc(value)
                );
            };
            let _ = write!(
                h,
                "<div class=\"ex{bad}\"><span class=\"k\">line {}</span><span></span>",
                s.line
            );
            field(&mut h, "prompt", &s.prompt);
            field(&mut h, "expected", &s.expected);
            field(&mut h, "base", &s.base);
            if let Some(t) = &s.tuned {
                field(&mut h, "tuned", t);
            }
            if let Some(d) = &s.deployed {
                field(&mut h, "deployed", d);
            }
            h.push_str("</div>");
        }
        h.push_str("</div>");
    }
    if let Some(info) = run {
        let _ = write!(
            h,
            "<h2>Run config</h2><pre>{}</pre>",
            esc(&info.config_toml)
        );
    }
    let _ = writeln!(
        h,
        "<div class=\"sub\">evaluation took {:.1} s · data <code>{}</code></div></main></body></html>",
        r.eval_seconds,
        esc(&r.data)
    );
    h
}

/// Score bars with their 95% intervals as whiskers, 0–100%.
fn bars_svg(r: &EvalResults) -> String {
    let (w, h) = (460.0, 230.0);
    let (left, bottom, top) = (44.0, 30.0, 14.0);
    let plot_h = h - bottom - top;
    let y = |v: f64| top + plot_h * (1.0 - v);
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"score bars\">"
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{w}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#e6e8ee\"/><text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5b6478\">{}%</text>",
            (tick * 100.0) as u32,
            y0 = y(tick),
            tx = left - 6.0,
            ty = y(tick) + 4.0
        );
    }
    let all = sides(r);
    let slot = (w - left) / all.len() as f64;
    for (i, side) in all.iter().enumerate() {
        let name = side.name;
        let color = match name {
            "base" => BASE_COLOR,
            "deployed" => DEPLOYED_COLOR,
            _ => TUNED_COLOR,
        };
        let bw = slot * 0.45;
        let x = left + slot * i as f64 + (slot - bw) / 2.0;
        let cx = x + bw / 2.0;
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" rx=\"4\" fill=\"{color}\"/>\
             <line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#1d2330\" stroke-width=\"1.5\"/>\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{lo:.1}\" y2=\"{lo:.1}\" stroke=\"#1d2330\" stroke-width=\"1.5\"/>\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{hi:.1}\" y2=\"{hi:.1}\" stroke=\"#1d2330\" stroke-width=\"1.5\"/>\
             <text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"middle\" fill=\"#1d2330\">{name} · {}</text>",
            y(side.score),
            plot_h * side.score,
            y(side.ci95[0]),
            y(side.ci95[1]),
            cx - 8.0,
            cx + 8.0,
            cx - 8.0,
            cx + 8.0,
            h - 10.0,
            pct(side.score),
            lo = y(side.ci95[0]),
            hi = y(side.ci95[1]),
        );
    }
    s.push_str("</svg>");
    s
}

/// Train (and validation) loss against step.
fn loss_svg(train: &[(u64, f64)], val: &[(u64, f64)]) -> String {
    if train.is_empty() {
        return "<div class=\"sub\">no losses logged</div>".into();
    }
    let (w, h) = (1000.0, 280.0);
    let (left, right, bottom, top) = (56.0, 16.0, 34.0, 12.0);
    let finite = train
        .iter()
        .chain(val)
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let max_loss = finite.fold(0.0f64, f64::max).max(1e-6) * 1.05;
    let max_step = train
        .iter()
        .chain(val)
        .map(|p| p.0)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |step: u64| left + (w - left - right) * step as f64 / max_step;
    let y = |loss: f64| top + (h - top - bottom) * (1.0 - loss / max_loss);
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"loss curves\">"
    );
    for i in 0..=4 {
        let v = max_loss * i as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e6e8ee\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5b6478\">{v:.2}</text>",
            w - right,
            left - 6.0,
            y(v) + 4.0,
            yy = y(v)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#5b6478\">step (last {})</text>",
        (left + w - right) / 2.0,
        h - 8.0,
        max_step as u64
    );
    let path = |points: &[(u64, f64)]| {
        points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(st, l)| format!("{:.1},{:.1}", x(st), y(l)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        s,
        "<polyline fill=\"none\" stroke=\"{TUNED_COLOR}\" stroke-width=\"2\" points=\"{}\"/>",
        path(train)
    );
    if !val.is_empty() {
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"#e8833a\" stroke-width=\"2\" stroke-dasharray=\"6 4\" points=\"{}\"/>",
            path(val)
        );
        for &(st, l) in val.iter().filter(|p| p.1.is_finite()) {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#e8833a\"/>",
                x(st),
                y(l)
            );
        }
    }
    let lx = w - right - 140.0;
    let _ = write!(
        s,
        "<rect x=\"{lx:.1}\" y=\"{top}\" width=\"14\" height=\"3\" fill=\"{TUNED_COLOR}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#1d2330\">train loss</text>\
         <rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"14\" height=\"3\" fill=\"#e8833a\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#1d2330\">validation loss</text></svg>",
        lx + 20.0,
        top + 5.0,
        top + 18.0,
        lx + 20.0,
        top + 23.0,
    );
    s
}
