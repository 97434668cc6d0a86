"""Makes the fixtures bora's text-to-speech tests replay: real MP3 audio, and what the official
ElevenLabs Python client (`elevenlabs`) sends for a streamed text-to-speech call.

1. Two short tones (440 Hz and 660 Hz, 0.4 s, 22.05 kHz mono) encoded by LAME (`lameenc`) at
   32 kbit/s: `crates/bora-hub/tests/fixtures/elevenlabs/tone_440.mp3` and `tone_660.mp3`.
   The fake ElevenLabs server of the tests answers with these bytes, so what bora writes or
   plays is real MP3 that any player decodes.
2. A local server answers `POST /v1/text-to-speech/{voice_id}/stream` the way the API does
   (`audio/mpeg`, chunked) with a tone; the client's `text_to_speech.stream` is called for
   each case and must yield exactly the tone's bytes. Every request (method, path with its
   query, the headers that matter, JSON body) is written to
   `crates/bora-hub/tests/fixtures/elevenlabs_tts.json`, which bora-hub's tests replay: bora's
   client must send what the official client sends.
"""
import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_venv import ROOT, ensure_venv  # noqa: E402

ensure_venv(__file__, ROOT / ".venv-speech", ["elevenlabs==2.78.0", "lameenc==1.9.0"])

import lameenc  # noqa: E402
from elevenlabs.client import ElevenLabs  # noqa: E402

API_KEY = "test-elevenlabs-key-0123456789"
FIXTURES = ROOT / "crates/bora-hub/tests/fixtures"
OUT = FIXTURES / "elevenlabs_tts.json"
RATE = 22050

# Case name -> keyword arguments of `text_to_speech.stream` besides the voice.
VOICE = "JBFqnCBsd6RMkjVDRZzb"
CASES = {
    "first_sentence": dict(
        text="The Rhône flows through Lyon.",
        model_id="eleven_flash_v2_5",
        output_format="mp3_44100_128",
    ),
    "continued": dict(
        text="It meets the Saône there, at the Confluence.",
        model_id="eleven_flash_v2_5",
        output_format="mp3_22050_32",
        previous_text="The Rhône flows through Lyon.",
    ),
    "pcm_for_aplay": dict(
        text="Raw samples, for players that cannot decode MP3.",
        model_id="eleven_multilingual_v2",
        output_format="pcm_24000",
    ),
}

KEPT_HEADERS = ("xi-api-key", "content-type", "accept")
recorded = []


def tone(freq: float, seconds: float = 0.4) -> bytes:
    """A sine tone with 20 ms fades, encoded as MP3 by LAME."""
    n = int(RATE * seconds)
    fade = int(RATE * 0.02)
    pcm = bytearray()
    for i in range(n):
        gain = min(1.0, i / fade, (n - 1 - i) / fade)
        sample = int(12000 * gain * math.sin(2 * math.pi * freq * i / RATE))
        pcm += sample.to_bytes(2, "little", signed=True)
    enc = lameenc.Encoder()
    enc.set_bit_rate(32)
    enc.set_in_sample_rate(RATE)
    enc.set_channels(1)
    enc.set_quality(2)
    return bytes(enc.encode(bytes(pcm)) + enc.flush())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    audio = b""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        recorded.append({
            "method": "POST",
            "path": self.path,
            "headers": {k: self.headers[k] for k in KEPT_HEADERS if self.headers[k] is not None},
            "body": body,
        })
        self.send_response(200)
        self.send_header("content-type", "audio/mpeg")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i in range(0, len(self.audio), 700):
            part = self.audio[i:i + 700]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args):
        pass


def main():
    tones = {name: tone(freq) for name, freq in (("tone_440.mp3", 440), ("tone_660.mp3", 660))}
    (FIXTURES / "elevenlabs").mkdir(parents=True, exist_ok=True)
    for name, data in tones.items():
        (FIXTURES / "elevenlabs" / name).write_bytes(data)
    Handler.audio = tones["tone_440.mp3"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = ElevenLabs(api_key=API_KEY, base_url=f"http://127.0.0.1:{server.server_address[1]}")
    cases = {}
    for name, kwargs in CASES.items():
        audio = b"".join(client.text_to_speech.stream(VOICE, **kwargs))
        assert audio == Handler.audio, f"{name}: the client yielded other bytes"
        cases[name] = recorded[-1]
    server.shutdown()
    from elevenlabs.version import __version__
    OUT.write_text(json.dumps({"client": f"elevenlabs {__version__}", "api_key": API_KEY,
                               "voice_id": VOICE, "cases": cases}, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)} and {len(tones)} tones "
          f"({', '.join(f'{n}: {len(d)} bytes' for n, d in tones.items())})")


if __name__ == "__main__":
    main()
