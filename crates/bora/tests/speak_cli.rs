//! `--speak` run as a user runs it, on the tiny Llama fixture, against the loopback ElevenLabs
//! API of bora-hub's tests (requests checked as the API documents them, real MP3 answered):
//! the text answer is printed exactly as without speech, the audio lands in order in a file
//! or a player, faults say what went wrong without losing the text, and the key shows up
//! nowhere.

mod common;
#[path = "../../bora-hub/tests/elevenlabs_api/mod.rs"]
mod elevenlabs_api;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{assert_ok, bora, model_dir, write_chats};
use elevenlabs_api::{mp3_frames, tones, FakeElevenLabs, Fault, API_KEY};

/// Runs bora in `cwd` with only `path` as PATH, the ElevenLabs variables of `env`, and
/// `stdin` as its input.
fn bora_speaking(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
    path: &Path,
    stdin: &str,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("ELEVENLABS_API_KEY")
        .env_remove("ELEVENLABS_BASE_URL")
        .env("PATH", path)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("bora runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The words of the text sent for speech, in order.
fn spoken_words(server: &FakeElevenLabs) -> Vec<String> {
    server
        .texts()
        .iter()
        .flat_map(|t| t.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

fn assert_no_key(out: &Output, files: &[&Path]) {
    assert!(!text(&out.stdout).contains(API_KEY));
    assert!(!text(&out.stderr).contains(API_KEY));
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_default();
        assert!(!text(&bytes).contains(API_KEY), "{}", f.display());
    }
}

const GENERATE: &[&str] = &[
    "generate",
    "--prompt",
    "w5 w9 w14",
    "--temperature",
    "0",
    "--max-tokens",
    "40",
    "--ignore-eos",
];

#[test]
fn generate_speak_writes_the_answer_audio_in_order_and_prints_the_same_text() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let model = model.to_str().unwrap();
    let mut plain = GENERATE.to_vec();
    plain.extend(["--model", model]);
    let silent = bora(&plain);
    assert_ok(&silent);

    let server = FakeElevenLabs::start();
    let out_file = tmp.path().join("answer.mp3");
    let mut args = plain.clone();
    args.extend(["--speak", "--audio-out", out_file.to_str().unwrap()]);
    let env = [
        ("ELEVENLABS_API_KEY", API_KEY),
        ("ELEVENLABS_BASE_URL", &server.url),
    ];
    let out = bora_speaking(&args, &env, tmp.path(), tmp.path(), "");
    assert_ok(&out);
    assert_eq!(
        text(&out.stdout),
        text(&silent.stdout),
        "the text is as without speech"
    );
    let n = server.requests().len();
    assert!(n >= 1);
    assert_eq!(std::fs::read(&out_file).unwrap(), tones(n));
    assert!(mp3_frames(&tones(n)).is_some());
    assert_eq!(spoken_words(&server), words(&text(&silent.stdout)));
    assert!(
        text(&out.stderr).contains("answer.mp3"),
        "{}",
        text(&out.stderr)
    );
    assert!(server.violations().is_empty(), "{:?}", server.violations());
    assert_no_key(&out, &[&out_file]);
}

#[test]
fn chat_speak_plays_through_a_player_or_writes_the_default_file_and_says_where() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let args = [
        "chat",
        "--model",
        model.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--speak",
    ];
    let server = FakeElevenLabs::start();
    let env = [
        ("ELEVENLABS_API_KEY", API_KEY),
        ("ELEVENLABS_BASE_URL", &server.url),
    ];
    let no_players = tmp.path().join("empty-path");
    std::fs::create_dir(&no_players).unwrap();
    let out = bora_speaking(&args, &env, tmp.path(), &no_players, "w5 w6\nw7 w8\n");
    assert_ok(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no audio player found") && stderr.contains("bora-answer.mp3"),
        "{stderr}"
    );
    let n = server.requests().len();
    assert!(n >= 2, "each answer is spoken: {n} requests");
    assert_eq!(
        std::fs::read(tmp.path().join("bora-answer.mp3")).unwrap(),
        tones(n)
    );
    assert_eq!(spoken_words(&server), words(&text(&out.stdout)));

    let players = tmp.path().join("players");
    std::fs::create_dir(&players).unwrap();
    let played = players.join("played.mp3");
    let script = players.join("mpv");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec /bin/cat > '{}'\n", played.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = FakeElevenLabs::start();
    let env = [
        ("ELEVENLABS_API_KEY", API_KEY),
        ("ELEVENLABS_BASE_URL", &server.url),
    ];
    let out = bora_speaking(&args, &env, tmp.path(), &players, "w5 w6\n");
    assert_ok(&out);
    assert!(
        text(&out.stderr).contains("speaking through mpv"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&played).unwrap(),
        tones(server.requests().len())
    );
    assert_no_key(&out, &[&played]);
}

#[test]
fn speech_faults_keep_the_text_answer_and_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let mut args = GENERATE.to_vec();
    args.extend(["--model", model.to_str().unwrap()]);
    let silent = bora(&args);
    assert_ok(&silent);
    let out_file = tmp.path().join("answer.mp3");
    args.extend(["--speak", "--audio-out", out_file.to_str().unwrap()]);

    // A 429 with Retry-After and a stream dropped mid-audio are retried: nothing is lost.
    let server = FakeElevenLabs::start();
    server.fault(Fault::Status(429, Some("0")));
    server.fault(Fault::DropMidAudio);
    let env = [
        ("ELEVENLABS_API_KEY", API_KEY),
        ("ELEVENLABS_BASE_URL", &server.url),
    ];
    let out = bora_speaking(&args, &env, tmp.path(), tmp.path(), "");
    assert_ok(&out);
    assert_eq!(text(&out.stdout), text(&silent.stdout));
    let answered = server.requests().len() - 2;
    assert_eq!(std::fs::read(&out_file).unwrap(), tones(answered));

    // A rejected key: the whole text, then a clear error and a failing exit.
    let secret = "sk_not_the_right_elevenlabs_key";
    let env = [
        ("ELEVENLABS_API_KEY", secret),
        ("ELEVENLABS_BASE_URL", &server.url),
    ];
    let out = bora_speaking(&args, &env, tmp.path(), tmp.path(), "");
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stdout),
        text(&silent.stdout),
        "the text answer is whole"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("speech failed") && stderr.contains("invalid_api_key"),
        "{stderr}"
    );
    assert!(stderr.contains("check ELEVENLABS_API_KEY"), "{stderr}");
    assert!(!stderr.contains(secret) && !text(&out.stdout).contains(secret));

    // No key at all: refused before any generation, naming the variable.
    let out = bora_speaking(
        &args,
        &[("ELEVENLABS_BASE_URL", &server.url)],
        tmp.path(),
        tmp.path(),
        "",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("set ELEVENLABS_API_KEY"),
        "{}",
        text(&out.stderr)
    );
    assert_no_key(&out, &[&out_file]);
}

#[test]
fn eval_speak_puts_the_answers_in_the_report_as_audio() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("data.jsonl");
    write_chats(&data, 12);
    let run = tmp.path().join("runs/tiny");
    let (model, data, run_arg) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
    );
    assert_ok(&bora(&[
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        run_arg,
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--rank",
        "4",
        "--seed",
        "1",
    ]));
    let server = FakeElevenLabs::start();
    let env = [
        ("ELEVENLABS_API_KEY", API_KEY),
        ("ELEVENLABS_BASE_URL", &server.url),
    ];
    let args = [
        "eval",
        "--run",
        run_arg,
        "--data",
        data,
        "--limit",
        "4",
        "--max-tokens",
        "8",
        "--speak",
        "2",
    ];
    let out = bora_speaking(&args, &env, tmp.path(), tmp.path(), "");
    assert_ok(&out);
    let html = std::fs::read_to_string(run.join("eval/report.html")).unwrap();
    assert!(html.contains("<h2>Spoken answers</h2>"));
    let players: Vec<&str> = html
        .split("<audio controls preload=\"none\" src=\"data:audio/mpeg;base64,")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(players.len(), 4, "base and tuned answers of 2 examples");
    use base64::Engine as _;
    let audio: Vec<u8> = players
        .iter()
        .flat_map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        })
        .collect();
    assert_eq!(
        audio,
        tones(server.requests().len()),
        "every answer's audio, in order"
    );
    assert!(server
        .requests()
        .iter()
        .all(|r| r.target.ends_with("?output_format=mp3_22050_32")));
    assert!(server.violations().is_empty(), "{:?}", server.violations());
    assert_no_key(&out, &[&run.join("eval/report.html")]);
}
