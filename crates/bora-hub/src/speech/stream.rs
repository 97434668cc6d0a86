//! Speech that follows a streamed answer: the text goes to a [`SentenceChunker`] as it comes,
//! each complete sentence to a worker thread that asks ElevenLabs for its audio and hands it,
//! in order, to a player or a file. Generation never waits for speech, and a speech failure
//! stops only the speech: the text has been shown already, and the error is kept for the
//! caller to report.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bora_formats::atomic::AtomicFile;

use super::{SentenceChunker, SpeechClient, SpeechError, SpeechRequest, DEFAULT_FORMAT};

/// A program that plays audio fed to its standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Player {
    pub program: PathBuf,
    pub args: Vec<&'static str>,
    /// What to ask ElevenLabs for: MP3, or raw 16-bit PCM for players that only take that.
    pub output_format: &'static str,
}

/// The players tried, in order: three that decode MP3 from a pipe, then ALSA's `aplay`,
/// which plays raw PCM (so ElevenLabs is asked for `pcm_24000`).
const PLAYERS: &[(&str, &[&str], &str)] = &[
    (
        "ffplay",
        &["-nodisp", "-autoexit", "-loglevel", "quiet", "-i", "-"],
        DEFAULT_FORMAT,
    ),
    (
        "mpv",
        &["--no-terminal", "--no-video", "--cache=no", "-"],
        DEFAULT_FORMAT,
    ),
    ("mpg123", &["-q", "-"], DEFAULT_FORMAT),
    (
        "aplay",
        &[
            "-q", "-t", "raw", "-f", "S16_LE", "-r", "24000", "-c", "1", "-",
        ],
        "pcm_24000",
    ),
];

impl Player {
    /// The first known player found on `path` (the value of `PATH`).
    pub fn detect(path: Option<OsString>) -> Option<Player> {
        let dirs: Vec<PathBuf> = path
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        PLAYERS.iter().find_map(|(name, args, format)| {
            let program = dirs.iter().map(|d| d.join(name)).find(|p| is_program(p))?;
            Some(Player {
                program,
                args: args.to_vec(),
                output_format: format,
            })
        })
    }

    /// The program's file name, for messages.
    pub fn name(&self) -> String {
        self.program.file_name().map_or_else(
            || self.program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

fn is_program(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// Where the audio goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioOut {
    /// Appended in order under a temporary name, renamed to this path at the end.
    File(PathBuf),
    Player(Player),
}

/// Where the audio went, once speech is finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpokenTo {
    File { path: PathBuf, bytes: u64 },
    Player { name: String },
}

/// The fewest bytes a second of the audio asked for takes (MP3 at 128 kbit/s; PCM at 24 kHz
/// takes more), to bound how long a player may still be playing.
const MIN_BYTES_PER_SECOND: f64 = 16_000.0;
/// How long a player may take past the end of its audio before it is stopped: one that cannot
/// open a sound device may wait forever.
const PLAYER_GRACE: Duration = Duration::from_secs(10);

enum Sink {
    File {
        file: AtomicFile,
        bytes: u64,
    },
    Player {
        child: Child,
        stdin: ChildStdin,
        name: String,
        bytes: u64,
    },
}

impl Sink {
    fn open(out: &AudioOut) -> Result<Sink, SpeechError> {
        match out {
            AudioOut::File(path) => Ok(Sink::File {
                file: AtomicFile::create(path)?,
                bytes: 0,
            }),
            AudioOut::Player(player) => {
                let name = player.name();
                let mut child = Command::new(&player.program)
                    .args(&player.args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|source| SpeechError::Output {
                        what: format!("starting the player {}", player.program.display()),
                        source,
                    })?;
                let stdin = child.stdin.take().expect("stdin was piped");
                Ok(Sink::Player {
                    child,
                    stdin,
                    name,
                    bytes: 0,
                })
            }
        }
    }

    fn write(&mut self, audio: &[u8]) -> Result<(), SpeechError> {
        match self {
            Sink::File { file, bytes } => {
                file.write_all(audio)?;
                *bytes += audio.len() as u64;
                Ok(())
            }
            Sink::Player {
                stdin, name, bytes, ..
            } => {
                *bytes += audio.len() as u64;
                stdin
                    .write_all(audio)
                    .and_then(|_| stdin.flush())
                    .map_err(|source| SpeechError::Output {
                        what: format!("the player {name} stopped taking audio"),
                        source,
                    })
            }
        }
    }

    /// Renames the file into place, or lets the player play out what it has and waits (no
    /// longer than the audio lasts and [`PLAYER_GRACE`]).
    fn close(self, path: &AudioOut) -> Result<SpokenTo, SpeechError> {
        match (self, path) {
            (Sink::File { file, bytes }, AudioOut::File(path)) => {
                file.commit()?;
                Ok(SpokenTo::File {
                    path: path.clone(),
                    bytes,
                })
            }
            (
                Sink::Player {
                    mut child,
                    stdin,
                    name,
                    bytes,
                },
                _,
            ) => {
                drop(stdin);
                let longest = Duration::from_secs_f64(bytes as f64 / MIN_BYTES_PER_SECOND);
                let deadline = Instant::now() + longest + PLAYER_GRACE;
                let waiting = |source| SpeechError::Output {
                    what: format!("waiting for the player {name}"),
                    source,
                };
                while child.try_wait().map_err(waiting)?.is_none() {
                    if Instant::now() > deadline {
                        // Stopping it is all that is left to do; its exit status says nothing.
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(SpeechError::Output {
                            what: format!("the player {name}"),
                            source: std::io::Error::other(format!(
                                "still running {} s after its audio should have ended; stopped it (is there a sound device? --audio-out FILE writes the audio instead)",
                                PLAYER_GRACE.as_secs()
                            )),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(SpokenTo::Player { name })
            }
            (Sink::File { .. }, AudioOut::Player(_)) => {
                unreachable!("a sink is opened for its own output")
            }
        }
    }
}

/// Speech following a streamed text; see the module documentation.
pub struct SpeechStream {
    chunker: SentenceChunker,
    sender: Option<Sender<String>>,
    worker: Option<JoinHandle<Result<SpokenTo, SpeechError>>>,
    /// The first failure, kept here as soon as it happens so the caller can say so between
    /// answers; the worker then drops the sentences still to come.
    failed: Arc<Mutex<Option<String>>>,
    reported: bool,
}

impl SpeechStream {
    /// Opens the output (creates the temporary file, or starts the player) and the worker.
    pub fn start(client: SpeechClient, out: AudioOut) -> Result<SpeechStream, SpeechError> {
        let mut sink = Sink::open(&out)?;
        let format = match &out {
            AudioOut::Player(p) => p.output_format,
            AudioOut::File(_) => DEFAULT_FORMAT,
        };
        let (sender, sentences) = channel::<String>();
        let failed = Arc::new(Mutex::new(None));
        let failed_in_worker = failed.clone();
        let worker = std::thread::spawn(move || {
            let mut spoken = String::new();
            let mut error = None;
            for text in sentences {
                if error.is_some() {
                    continue;
                }
                let request = SpeechRequest {
                    text: &text,
                    previous_text: Some(&spoken),
                    output_format: format,
                };
                let result = client
                    .synthesize(&request)
                    .and_then(|audio| sink.write(&audio));
                match result {
                    Ok(()) => {
                        if !spoken.is_empty() {
                            spoken.push(' ');
                        }
                        spoken.push_str(&text);
                    }
                    Err(e) => {
                        *failed_in_worker.lock().expect("not poisoned") = Some(e.to_string());
                        error = Some(e);
                    }
                }
            }
            let closed = sink.close(&out);
            match error {
                Some(e) => Err(e),
                None => closed,
            }
        });
        Ok(SpeechStream {
            chunker: SentenceChunker::new(),
            sender: Some(sender),
            worker: Some(worker),
            failed,
            reported: false,
        })
    }

    /// Adds streamed text; complete sentences go to the worker at once.
    pub fn push(&mut self, text: &str) {
        for sentence in self.chunker.push(text) {
            self.send(sentence);
        }
    }

    /// Ends one answer: what is left of it is spoken too.
    pub fn end_answer(&mut self) {
        if let Some(rest) = self.chunker.finish() {
            self.send(rest);
        }
    }

    fn send(&self, sentence: String) {
        if let Some(sender) = &self.sender {
            // A worker that has stopped has kept its error; `finish` returns it.
            let _ = sender.send(sentence);
        }
    }

    /// The failure that stopped speech, the first time it is asked after it happened.
    pub fn new_failure(&mut self) -> Option<String> {
        if self.reported {
            return None;
        }
        let failure = self.failed.lock().expect("not poisoned").clone();
        self.reported = failure.is_some();
        failure
    }

    /// Speaks what is left, waits for the audio to be written or played, and says where it
    /// went; or the error that stopped speech (the audio before it is kept).
    pub fn finish(mut self) -> Result<SpokenTo, SpeechError> {
        self.end_answer();
        drop(self.sender.take());
        let worker = self.worker.take().expect("finish runs once");
        worker.join().unwrap_or_else(|_| {
            Err(SpeechError::Output {
                what: "the speech worker".into(),
                source: std::io::Error::other("it panicked"),
            })
        })
    }
}
