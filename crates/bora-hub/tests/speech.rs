//! The ElevenLabs text-to-speech client against a loopback server that checks requests as the
//! API documents them and streams real MP3 audio: it must send what the official
//! `elevenlabs` client sent (tests/fixtures/elevenlabs_tts.json, recorded by
//! scripts/make_elevenlabs_fixtures.py), keep audio in sentence order, get through 429s and
//! dropped streams, and stop with a clear message, never showing the key.

mod elevenlabs_api;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_hub::hub::Retry;
use bora_hub::speech::{
    sentences, AudioOut, Player, SpeechClient, SpeechError, SpeechRequest, SpeechStream, SpokenTo,
    DEFAULT_FORMAT, DEFAULT_MODEL, DEFAULT_VOICE,
};
use elevenlabs_api::{mp3_frames, recording, tone, tones, FakeElevenLabs, Fault, API_KEY};

type Waits = Arc<Mutex<Vec<Duration>>>;

/// A client for `url` with `key`, whose waits are recorded, not slept.
fn client_with_key(url: &str, key: &str, voice: &str, model: &str) -> (SpeechClient, Waits) {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let w = waits.clone();
    let retry = Retry::default().with_sleep(move |d| w.lock().unwrap().push(d));
    let (url, key) = (url.to_owned(), key.to_owned());
    let env = move |k: &str| match k {
        "ELEVENLABS_API_KEY" => Some(key.clone()),
        "ELEVENLABS_BASE_URL" => Some(url.clone()),
        _ => None,
    };
    let c = SpeechClient::from_env(env, voice, model)
        .unwrap()
        .with_retry(retry)
        .with_timeout(Duration::from_millis(1500));
    (c, waits)
}

fn client(server: &FakeElevenLabs) -> (SpeechClient, Waits) {
    client_with_key(&server.url, API_KEY, DEFAULT_VOICE, DEFAULT_MODEL)
}

fn say(c: &SpeechClient, text: &str) -> Result<Vec<u8>, SpeechError> {
    c.synthesize(&SpeechRequest {
        text,
        previous_text: None,
        output_format: DEFAULT_FORMAT,
    })
}

#[test]
fn the_fixture_tones_are_whole_mp3_streams() {
    for n in 0..2 {
        let frames = mp3_frames(&tone(n)).expect("MP3 frames from start to end");
        assert!(frames > 10, "{frames} frames");
    }
    assert!(
        mp3_frames(&tone(0)[..1000]).is_none(),
        "a cut frame is caught"
    );
}

#[test]
fn sends_what_the_official_client_sends_and_returns_the_audio() {
    let rec = recording();
    let voice = rec["voice_id"].as_str().unwrap();
    for (name, case) in rec["cases"].as_object().unwrap() {
        let server = FakeElevenLabs::start();
        let body = &case["body"];
        let (c, _) = client_with_key(
            &server.url,
            API_KEY,
            voice,
            body["model_id"].as_str().unwrap(),
        );
        let path = case["path"].as_str().unwrap();
        let format = path.split("output_format=").nth(1).unwrap();
        let audio = c
            .synthesize(&SpeechRequest {
                text: body["text"].as_str().unwrap(),
                previous_text: body["previous_text"].as_str(),
                output_format: format,
            })
            .unwrap();
        assert_eq!(audio, tone(0), "{name}: the streamed audio, whole");
        let sent = &server.requests()[0];
        assert_eq!(sent.method, case["method"], "{name}");
        assert_eq!(sent.target, path, "{name}");
        for (k, v) in case["headers"].as_object().unwrap() {
            assert_eq!(sent.header(k), v.as_str(), "{name}: header {k}");
        }
        assert_eq!(sent.json(), *body, "{name}: body");
        assert_eq!(server.violations(), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn a_text_is_spoken_a_sentence_at_a_time_with_the_text_before_it() {
    let server = FakeElevenLabs::start();
    let (c, _) = client(&server);
    let text = "The Rhône flows through Lyon. It meets the Saône there, at the Confluence. \
                Both rivers then run south to the sea!";
    let audio = c.speak(text, DEFAULT_FORMAT).unwrap();
    assert_eq!(audio, tones(3));
    assert_eq!(mp3_frames(&audio), Some(3 * mp3_frames(&tone(0)).unwrap()));
    let expected = sentences(text);
    assert_eq!(server.texts(), expected);
    let previous: Vec<Option<String>> = server
        .requests()
        .iter()
        .map(|r| r.json()["previous_text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        previous,
        [
            None,
            Some(expected[0].clone()),
            Some(format!("{} {}", expected[0], expected[1]))
        ]
    );
    assert!(server.violations().is_empty(), "{:?}", server.violations());
}

#[test]
fn retries_429_after_the_wait_retry_after_asks_for_and_a_dropped_stream() {
    let server = FakeElevenLabs::start();
    server.fault(Fault::Status(429, Some("2")));
    server.fault(Fault::DropMidAudio);
    server.fault(Fault::Stall(4000));
    let (c, waits) = client(&server);
    assert_eq!(say(&c, "Hello there, how are you?").unwrap(), tone(0));
    assert_eq!(
        *waits.lock().unwrap(),
        [
            Duration::from_secs(2),
            Duration::from_secs(2),
            Duration::from_secs(4)
        ],
        "Retry-After first, then the backoff of attempts 2 and 3"
    );
    assert_eq!(server.requests().len(), 4);
}

#[test]
fn a_stream_that_keeps_dropping_is_a_clear_error_after_bounded_attempts() {
    let server = FakeElevenLabs::start();
    for _ in 0..6 {
        server.fault(Fault::DropMidAudio);
    }
    let (c, _) = client(&server);
    let e = say(&c, "This answer will never be heard.").unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("text to speech failed: POST "), "{text}");
    assert!(
        text.contains("/v1/text-to-speech/") && text.contains("failed after 6 attempts"),
        "{text}"
    );
    assert_eq!(server.requests().len(), 6);
}

#[test]
fn a_rejected_key_stops_at_once_and_never_shows_the_key() {
    let server = FakeElevenLabs::start();
    let secret = "sk_wrong_secret_elevenlabs_key";
    let (c, waits) = client_with_key(&server.url, secret, DEFAULT_VOICE, DEFAULT_MODEL);
    let e = say(&c, "Nobody hears this sentence.").unwrap_err();
    assert!(
        matches!(e, SpeechError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    let text = format!("{e} {e:?} {c:?}");
    assert!(text.contains("invalid_api_key: Invalid API key"), "{text}");
    assert!(text.contains("check ELEVENLABS_API_KEY"), "{text}");
    assert!(!text.contains(secret), "{text}");
    assert_eq!(server.requests().len(), 1);
    assert!(waits.lock().unwrap().is_empty(), "401 is not retried");

    let (c, _) = client(&server);
    server.fault(Fault::Status(401, None));
    let e = say(&c, "Over the quota by now.").unwrap_err();
    assert!(e.to_string().contains("quota_exceeded"), "{e}");
    assert!(!format!("{e} {e:?}").contains(API_KEY));
}

fn stream_in_pieces(stream: &mut SpeechStream, text: &str) {
    let chars: Vec<char> = text.chars().collect();
    for part in chars.chunks(3) {
        stream.push(&part.iter().collect::<String>());
    }
    stream.end_answer();
}

const ANSWER: &str = "Lyon sits where two rivers meet. The Rhône comes from the Alps; \
                      the Saône comes from the north. They join at the Confluence";

#[test]
fn streamed_speech_appends_audio_in_order_and_renames_the_file_at_the_end() {
    let server = FakeElevenLabs::start();
    let (c, _) = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("answer.mp3");
    let mut stream = SpeechStream::start(c, AudioOut::File(out.clone())).unwrap();
    stream_in_pieces(&mut stream, ANSWER);
    stream_in_pieces(&mut stream, "A second answer, in the same file.");
    let spoken = stream.finish().unwrap();
    let n = sentences(ANSWER).len() + 1;
    assert_eq!(
        spoken,
        SpokenTo::File {
            path: out.clone(),
            bytes: tones(n).len() as u64
        }
    );
    assert_eq!(std::fs::read(&out).unwrap(), tones(n));
    let mut expected = sentences(ANSWER);
    expected.push("A second answer, in the same file.".into());
    assert_eq!(server.texts(), expected);
    assert_eq!(
        names_in(dir.path()),
        ["answer.mp3"],
        "no temporary file is left"
    );
    assert!(server.violations().is_empty(), "{:?}", server.violations());
}

/// Polls `done` for up to 10 s (the speech worker runs on its own thread).
fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_failure_stops_speech_keeps_the_audio_before_it_and_names_the_cause() {
    let server = FakeElevenLabs::start();
    let (c, _) = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("answer.mp3");
    let mut stream = SpeechStream::start(c, AudioOut::File(out.clone())).unwrap();
    stream_in_pieces(&mut stream, "The first sentence is spoken fine.");
    wait_until(|| server.state.lock().unwrap().answered == 1);
    server.fault(Fault::Status(401, None));
    stream_in_pieces(&mut stream, "The second one meets an exhausted quota.");
    let mut failure = None;
    for _ in 0..1000 {
        failure = stream.new_failure();
        if failure.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(failure.unwrap().contains("quota_exceeded"));
    assert_eq!(stream.new_failure(), None, "a failure is reported once");
    stream_in_pieces(&mut stream, "The third is never asked for.");
    let e = stream.finish().unwrap_err();
    assert!(e.to_string().contains("quota_exceeded"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), tones(1));
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn a_player_that_never_ends_is_stopped_with_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mpv");
    std::fs::write(&script, "#!/bin/sh\nexec /bin/sleep 120\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let player = Player::detect(Some(dir.path().into())).unwrap();
    let server = FakeElevenLabs::start();
    let (c, _) = client(&server);
    let mut stream = SpeechStream::start(c, AudioOut::Player(player)).unwrap();
    stream_in_pieces(&mut stream, "Nobody is listening to this sentence.");
    let e = stream.finish().unwrap_err().to_string();
    assert!(
        e.contains("the player mpv") && e.contains("stopped it"),
        "{e}"
    );
}

/// A player on a PATH of its own: a script that saves what it is fed.
fn fake_player(dir: &Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let played = dir.join(format!("{name}.played"));
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec /bin/cat > '{}'\n", played.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    played
}

#[test]
fn players_are_found_on_the_path_in_order_and_fed_the_audio() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Player::detect(Some(dir.path().into())), None);
    let aplay_played = fake_player(dir.path(), "aplay");
    let aplay = Player::detect(Some(dir.path().into())).unwrap();
    assert_eq!(
        (aplay.name().as_str(), aplay.output_format),
        ("aplay", "pcm_24000")
    );
    let mpv_played = fake_player(dir.path(), "mpv");
    let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
    let mpv = Player::detect(Some(path)).unwrap();
    assert_eq!(
        (mpv.name().as_str(), mpv.output_format),
        ("mpv", DEFAULT_FORMAT)
    );

    let server = FakeElevenLabs::start();
    let (c, _) = client(&server);
    let mut stream = SpeechStream::start(c, AudioOut::Player(mpv)).unwrap();
    stream_in_pieces(&mut stream, ANSWER);
    assert_eq!(
        stream.finish().unwrap(),
        SpokenTo::Player { name: "mpv".into() }
    );
    assert_eq!(
        std::fs::read(&mpv_played).unwrap(),
        tones(sentences(ANSWER).len())
    );

    let (c, _) = client(&server);
    let mut stream = SpeechStream::start(c, AudioOut::Player(aplay)).unwrap();
    stream_in_pieces(&mut stream, "Raw samples for the ALSA player.");
    stream.finish().unwrap();
    assert!(aplay_played.exists());
    let last = server.requests().pop().unwrap();
    assert!(
        last.target.ends_with("?output_format=pcm_24000"),
        "{}",
        last.target
    );
}
