//! `--speak` for `bora chat` and `bora generate`: the answer read aloud by ElevenLabs as it
//! streams (bora_hub::speech), played where a player is found, else written to a file; and
//! for `bora eval`, answers read aloud into the HTML report.

use std::path::PathBuf;

use anyhow::{bail, Result};
use bora_eval::{samples_to_speak, SampleRow, SpokenSample};
use bora_hub::speech::{
    AudioOut, Player, SpeechClient, SpeechError, SpeechStream, SpokenTo, DEFAULT_MODEL,
    DEFAULT_VOICE,
};
use clap::Args;

/// Where the audio goes when no player is found and no --audio-out is given.
pub const DEFAULT_AUDIO_FILE: &str = "bora-answer.mp3";

#[derive(Args, Debug)]
pub struct SpeakArgs {
    /// Read the answer aloud as it streams, with ElevenLabs text to speech (key from
    /// ELEVENLABS_API_KEY, endpoint from ELEVENLABS_BASE_URL): played with ffplay, mpv,
    /// mpg123 or aplay when one is on PATH, else written to bora-answer.mp3.
    #[arg(long)]
    speak: bool,
    #[command(flatten)]
    voice: VoiceArgs,
    /// Write the audio (MP3) to this file instead of playing it [default: a player on PATH,
    /// else bora-answer.mp3].
    #[arg(long, value_name = "FILE", requires = "speak")]
    audio_out: Option<PathBuf>,
}

/// Which ElevenLabs voice speaks, with which model (for every command's `--speak`).
#[derive(Args, Debug)]
pub struct VoiceArgs {
    /// ElevenLabs voice id (with --speak).
    #[arg(long, value_name = "ID", default_value = DEFAULT_VOICE, requires = "speak")]
    voice: String,
    /// ElevenLabs model id (with --speak).
    #[arg(long, value_name = "ID", default_value = DEFAULT_MODEL, requires = "speak")]
    voice_model: String,
}

impl VoiceArgs {
    /// A speech client with the key and endpoint from the environment.
    pub fn client(&self) -> Result<SpeechClient> {
        Ok(SpeechClient::from_env(
            |k| std::env::var(k).ok(),
            &self.voice,
            &self.voice_model,
        )?)
    }
}

/// MP3 at 22.05 kHz and 32 kbit/s for the eval report: speech stays clear, and a sentence
/// costs about 4 KB of the page instead of 16 KB at the chat default.
pub const REPORT_FORMAT: &str = "mp3_22050_32";

/// The base and tuned answers of the `n` examples [`samples_to_speak`] picks, read aloud.
pub fn speak_samples(
    client: &SpeechClient,
    samples: &[SampleRow],
    n: usize,
) -> Result<Vec<SpokenSample>, SpeechError> {
    samples_to_speak(samples, n)
        .into_iter()
        .map(|s| {
            Ok(SpokenSample {
                line: s.line,
                base: client.speak(&s.base, REPORT_FORMAT)?,
                tuned: s
                    .tuned
                    .as_deref()
                    .map(|t| client.speak(t, REPORT_FORMAT))
                    .transpose()?,
            })
        })
        .collect()
}

/// Speech following the answers of one command.
pub struct Speech {
    stream: SpeechStream,
    out: AudioOut,
}

impl SpeakArgs {
    /// Starts speech when --speak was given; says on stderr where the audio goes.
    pub fn start(&self) -> Result<Option<Speech>> {
        if !self.speak {
            return Ok(None);
        }
        let client = self.voice.client()?;
        let out = match &self.audio_out {
            Some(path) => AudioOut::File(path.clone()),
            None => match Player::detect(std::env::var_os("PATH")) {
                Some(player) => {
                    eprintln!("speaking through {}", player.name());
                    AudioOut::Player(player)
                }
                None => {
                    eprintln!(
                        "no audio player found (ffplay, mpv, mpg123 or aplay); the speech goes to {DEFAULT_AUDIO_FILE}"
                    );
                    AudioOut::File(PathBuf::from(DEFAULT_AUDIO_FILE))
                }
            },
        };
        let stream = SpeechStream::start(client, out.clone())?;
        Ok(Some(Speech { stream, out }))
    }
}

impl Speech {
    /// Streamed text of the answer.
    pub fn push(&mut self, text: &str) {
        self.stream.push(text);
    }

    /// The answer is complete: its last words are spoken too, and a failure since the last
    /// answer is said (the text above is whole; speech stops, the chat goes on).
    pub fn end_answer(&mut self) {
        self.stream.end_answer();
        if let Some(failure) = self.stream.new_failure() {
            eprintln!("speech stopped: {failure}");
        }
    }

    /// Waits for the audio to be written or played; an error when speech failed.
    pub fn finish(self) -> Result<()> {
        match (self.stream.finish(), &self.out) {
            (Ok(SpokenTo::File { path, bytes }), _) => {
                eprintln!("speech: {} ({bytes} bytes)", path.display());
                Ok(())
            }
            (Ok(SpokenTo::Player { .. }), _) => Ok(()),
            (Err(e), AudioOut::File(path)) => bail!(
                "speech failed: {e} (the text answer is complete; {} holds the audio before the failure)",
                path.display()
            ),
            (Err(e), AudioOut::Player(_)) => {
                bail!("speech failed: {e} (the text answer is complete)")
            }
        }
    }
}
