"""Build a small, deterministic on-disk corpus of raw audio with known properties for the tests.
Speech comes from the espeak-ng CLI; it is re-encoded into many containers, codecs, rates and broken files."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

__all__ = [
    "CORPUS_NAMES",
    "LONG_SECONDS",
    "REJECT_REASONS",
    "CorpusFile",
    "CorpusToolMissing",
    "build_corpus",
    "read_speech",
    "speak",
]

Audio = npt.NDArray[np.float32]

ESPEAK_RATE = 22050
LONG_RATE = 16000
LONG_SECONDS = 180
NOISE_DBFS = -60.0
SEED = 20240611

REJECT_REASONS = ("decode_error", "empty", "too_short", "silent", "non_finite", "duplicate")

# File names in the order build_corpus returns them.
CORPUS_NAMES = (
    "mulaw_8k.wav",
    "pcm16_16k.wav",
    "pcm24_48k_stereo.wav",
    "float32_44k.wav",
    "speech.flac",
    "speech.mp3",
    "speech.ogg",
    "speech.opus",
    "speech.m4a",
    "truncated.flac",
    "empty.wav",
    "notaudio.wav",
    "nans.wav",
    "silent.wav",
    "pcm16_16k_copy.wav",
    "long_3min.wav",
    "short_0p5s.wav",
)

# (sentence, voice, speed, pitch) for each single-utterance file; each renders to roughly 3-6 s.
_SINGLE: dict[str, tuple[str, str, int, int]] = {
    "mulaw_8k.wav": (
        "The old telephone line crackled as she read the numbers back to him.",
        "en-us",
        160,
        50,
    ),
    "pcm16_16k.wav": ("A small boat drifted slowly across the quiet harbour at dawn.", "en-gb", 150, 45),
    "pcm24_48k_stereo.wav": (
        "Two microphones recorded the violin from opposite sides of the stage.",
        "en-gb-scotland",
        155,
        55,
    ),
    "float32_44k.wav": (
        "Fresh bread and warm coffee filled the kitchen with a pleasant smell.",
        "en-us+f3",
        160,
        60,
    ),
    "speech.flac": (
        "The library closes early on Sundays, so please return your books on time.",
        "en+m3",
        165,
        40,
    ),
    "speech.mp3": ("Heavy rain is expected across the northern hills later this evening.", "en-029", 160, 50),
    "speech.ogg": ("Seven children built a tall snowman in the middle of the park.", "en-gb-x-rp", 150, 55),
    "speech.opus": ("The train to the coast leaves from platform four in ten minutes.", "en-us-nyc", 160, 48),
    "speech.m4a": ("Please remember to water the tomatoes before the sun gets too hot.", "en-us+f3", 155, 65),
    "truncated.flac": (
        "This recording was cut in half before it could finish, and the rest of the sentence is gone forever.",
        "en-gb",
        165,
        50,
    ),
    "short_0p5s.wav": ("Hello there, everybody.", "en-us", 170, 50),
}

# Sentences for long_3min.wav, cycled over voices with varied speed and pitch.
_LONG_SENTENCES = (
    "Every morning the baker opens his shop before the streets are light.",
    "The museum keeps a map of the city drawn more than three hundred years ago.",
    "A gentle wind moved through the tall grass beside the river.",
    "She counted the coins twice before handing them over to the clerk.",
    "Our neighbours painted their front door a bright shade of yellow.",
    "The pilot announced that we would land about twenty minutes early.",
    "Nobody expected the quiet student to win the chess tournament.",
    "He fixed the broken bicycle chain with a pair of pliers and some patience.",
    "The lighthouse keeper wrote a letter to his sister every single week.",
    "Bright orange leaves covered the path through the forest in autumn.",
    "The committee will meet again on Thursday to discuss the new budget.",
    "A flock of geese flew south in a long and untidy line.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Thunder rolled over the valley while the farmers hurried the cattle inside.",
    "The teacher asked everyone to read the first chapter before Monday.",
    "An old radio in the corner played jazz from a station far away.",
    "The hikers reached the summit just as the clouds began to clear.",
    "Please switch off the lights and close the windows when you leave.",
    "The market sells apples, cheese, honey and hand woven baskets.",
    "A curious cat watched the goldfish from the edge of the table.",
    "The engineer explained how the bridge could carry so much weight.",
    "Snow fell softly on the roofs of the little mountain village.",
    "They spent the whole afternoon repairing the fence around the garden.",
    "The orchestra tuned their instruments while the audience found their seats.",
    "Fishermen mended their nets on the pier as the tide came in.",
    "My grandmother still writes her shopping list on the back of envelopes.",
    "The new bus route will connect the hospital with the university.",
    "Children laughed and splashed in the shallow water near the shore.",
    "The detective noticed a tiny scratch on the surface of the old desk.",
    "We planted a row of sunflowers along the wall behind the house.",
)
_LONG_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en+m3", "en-029")

_NOT_AUDIO_TEXT = (
    "This file has a .wav name but it holds nothing except plain English prose.\n"
    "Any decoder that opens it should report that it cannot understand the contents.\n"
    "It exists so that the pipeline can prove it rejects such files instead of crashing.\n"
)


class CorpusToolMissing(RuntimeError):
    """A command-line tool needed to build the corpus (espeak-ng or ffmpeg) is not installed."""


@dataclass(frozen=True)
class CorpusFile:
    name: str
    path: Path
    expect: str  # "ok" or one of REJECT_REASONS
    note: str


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise CorpusToolMissing(f"{tool!r} is not on PATH; the test corpus needs it (apt-get install {tool})")
    return found


def _run(argv: Sequence[str]) -> None:
    try:
        subprocess.run(list(argv), check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
        raise RuntimeError(f"command failed ({exc.returncode}): {' '.join(argv)}\n{stderr}") from exc


def speak(text: str, voice: str, path: Path, speed: int = 160, pitch: int = 50) -> None:
    """Synthesize ``text`` with espeak-ng into ``path`` (22050 Hz, 16-bit, mono WAV)."""
    exe = _require("espeak-ng")
    _run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), "--", text])


def read_speech(text: str, voice: str, speed: int = 160, pitch: int = 50) -> tuple[Audio, int]:
    """Synthesize ``text`` and return (float32 mono samples in [-1, 1], sample rate)."""
    with tempfile.TemporaryDirectory(prefix="w2v-speak-") as tmp:
        wav = Path(tmp) / "speech.wav"
        speak(text, voice, wav, speed=speed, pitch=pitch)
        data, rate = sf.read(wav, dtype="float32", always_2d=False)
    samples = np.asarray(data, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise RuntimeError(f"espeak-ng produced no mono audio for voice {voice!r}: shape {samples.shape}")
    return samples, int(rate)


def _resample(x: Audio, rate_in: int, rate_out: int) -> Audio:
    if rate_in == rate_out:
        return x
    return np.asarray(soxr.resample(x, rate_in, rate_out, quality="HQ"), dtype=np.float32)


def _trim(x: Audio, threshold: float = 1e-3) -> Audio:
    loud = np.flatnonzero(np.abs(x) > threshold)
    return x if loud.size == 0 else x[loud[0] : loud[-1] + 1]


def _ffmpeg_encode(x: Audio, rate: int, out: Path, codec_args: Sequence[str]) -> None:
    exe = _require("ffmpeg")
    with tempfile.TemporaryDirectory(prefix="w2v-ffmpeg-") as tmp:
        src = Path(tmp) / "in.wav"
        sf.write(src, x, rate, subtype="FLOAT")
        _run(
            [
                exe,
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(src),
                "-map_metadata",
                "-1",
                "-fflags",
                "+bitexact",
                "-flags:a",
                "+bitexact",
                *codec_args,
                str(out),
            ]
        )


# Ogg pages carry a stream serial number that libsndfile draws at random; rewrite it (and the page CRC)
# so that the same audio always gives the same bytes.
def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def _ogg_crc(page: bytes | bytearray) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _ogg_fixed_serials(data: bytes, base_serial: int = 0x5732_7600) -> bytes:
    out = bytearray()
    serials: dict[bytes, int] = {}
    pos = 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS" or pos + 27 > len(data):
            raise ValueError(f"not an Ogg page at byte {pos}")
        nsegs = data[pos + 26]
        body = sum(data[pos + 27 : pos + 27 + nsegs])
        end = pos + 27 + nsegs + body
        page = bytearray(data[pos:end])
        serial = serials.setdefault(bytes(page[14:18]), base_serial + len(serials))
        page[14:18] = serial.to_bytes(4, "little")
        page[22:26] = b"\0\0\0\0"
        page[22:26] = _ogg_crc(page).to_bytes(4, "little")
        out += page
        pos = end
    return bytes(out)


def _write_float_wav(path: Path, x: Audio, rate: int) -> None:
    """Write a WAV with subtype FLOAT through soundfile, zeroing the timestamp libsndfile puts in PEAK."""
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="FLOAT")
    data = bytearray(buf.getvalue())
    pos = 12  # after "RIFF", size, "WAVE"
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if data[pos : pos + 4] == b"PEAK" and size >= 8:
            data[pos + 12 : pos + 16] = b"\0\0\0\0"  # after the chunk header and the version field
        pos += 8 + size + (size & 1)
    path.write_bytes(bytes(data))


def _write_soundfile_or_ffmpeg(
    x: Audio, rate: int, out: Path, fmt: str, subtype: str, ffmpeg_args: Sequence[str]
) -> str:
    """Encode with libsndfile if it can (and it reads back), else with ffmpeg; return which one was used."""
    try:
        buf = io.BytesIO()
        sf.write(buf, x, rate, format=fmt, subtype=subtype)
        data = buf.getvalue()
        if fmt == "OGG":
            data = _ogg_fixed_serials(data)
        back, _ = sf.read(io.BytesIO(data), dtype="float32")
        if len(back) < len(x) // 2:
            raise RuntimeError("read-back too short")
    except (sf.LibsndfileError, TypeError, ValueError, RuntimeError):
        _ffmpeg_encode(x, rate, out, ffmpeg_args)
        return "ffmpeg"
    out.write_bytes(data)
    return "soundfile"


def _long_speech(rng: np.random.Generator) -> Audio:
    target = LONG_SECONDS * LONG_RATE
    noise_rms = 10.0 ** (NOISE_DBFS / 20.0)

    def pause() -> Audio:
        n = int(rng.uniform(0.2, 0.6) * LONG_RATE)
        return (rng.standard_normal(n) * noise_rms).astype(np.float32)

    parts: list[Audio] = [pause()]
    total = len(parts[0])
    for i in range(len(_LONG_SENTENCES) * len(_LONG_VOICES)):
        sentence = _LONG_SENTENCES[i % len(_LONG_SENTENCES)]
        voice = _LONG_VOICES[i % len(_LONG_VOICES)]
        speed = int(rng.integers(150, 181))
        pitch = int(rng.integers(35, 66))
        x, rate = read_speech(sentence, voice, speed=speed, pitch=pitch)
        utt = _trim(_resample(x, rate, LONG_RATE))
        gap = pause()
        if total + len(utt) + len(gap) > target:
            break
        parts += [utt, gap]
        total += len(utt) + len(gap)
    if total < target:
        parts.append((rng.standard_normal(target - total) * noise_rms).astype(np.float32))
    return np.clip(np.concatenate(parts)[:target], -1.0, 1.0).astype(np.float32)


def build_corpus(root: Path) -> list[CorpusFile]:
    """Create the corpus files (names in CORPUS_NAMES) and ``metadata.jsonl`` under ``root``."""
    _require("espeak-ng")
    _require("ffmpeg")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    files: list[CorpusFile] = []
    meta: list[dict[str, str | None]] = []

    speech: dict[str, Audio] = {}
    for name, (text, voice, speed, pitch) in _SINGLE.items():
        x, rate = read_speech(text, voice, speed=speed, pitch=pitch)
        assert rate == ESPEAK_RATE, rate
        speech[name] = x

    def add(name: str, expect: str, note: str) -> Path:
        assert name in CORPUS_NAMES and expect in ("ok", *REJECT_REASONS)
        path = root / name
        files.append(CorpusFile(name=name, path=path, expect=expect, note=note))
        if expect == "ok" and name in _SINGLE:
            text, voice, _, _ = _SINGLE[name]
            meta.append({"path": name, "text": text, "speaker": voice})
        return path

    sr = ESPEAK_RATE

    name = "mulaw_8k.wav"
    sf.write(
        add(name, "ok", "8 kHz mono WAV, G.711 mu-law"),
        _resample(speech[name], sr, 8000),
        8000,
        format="WAV",
        subtype="ULAW",
    )

    name = "pcm16_16k.wav"
    sf.write(
        add(name, "ok", "16 kHz mono WAV, PCM_16"),
        _resample(speech[name], sr, 16000),
        16000,
        format="WAV",
        subtype="PCM_16",
    )

    name = "pcm24_48k_stereo.wav"
    left = _resample(speech[name], sr, 48000)
    delay = int(0.003 * 48000)
    right = 0.6 * np.concatenate([np.zeros(delay, np.float32), left[:-delay]])
    sf.write(
        add(name, "ok", "48 kHz stereo WAV, PCM_24; right = 0.6 * left delayed 3 ms"),
        np.stack([left, right], axis=1),
        48000,
        format="WAV",
        subtype="PCM_24",
    )

    name = "float32_44k.wav"
    x = _resample(speech[name], sr, 44100)
    x = (x * (0.8 / float(np.max(np.abs(x))))).astype(np.float32)
    _write_float_wav(add(name, "ok", "44.1 kHz mono WAV, IEEE float32, peak 0.8"), x, 44100)

    name = "speech.flac"
    path = add(name, "ok", "22.05 kHz mono FLAC, PCM_16")
    sf.write(path, speech[name], sr, format="FLAC", subtype="PCM_16")

    name = "speech.mp3"
    x = _resample(speech[name], sr, 44100)
    tool = _write_soundfile_or_ffmpeg(
        x, 44100, root / name, "MP3", "MPEG_LAYER_III", ["-c:a", "libmp3lame", "-b:a", "64k"]
    )
    add(name, "ok", f"44.1 kHz mono MP3 (MPEG-1 Layer III) via {tool}")

    name = "speech.ogg"
    x = _resample(speech[name], sr, 32000)
    tool = _write_soundfile_or_ffmpeg(x, 32000, root / name, "OGG", "VORBIS", ["-c:a", "libvorbis"])
    add(name, "ok", f"32 kHz mono Ogg Vorbis via {tool}")

    name = "speech.opus"
    x = _resample(speech[name], sr, 48000)
    tool = _write_soundfile_or_ffmpeg(
        x, 48000, root / name, "OGG", "OPUS", ["-c:a", "libopus", "-b:a", "32k", "-f", "ogg"]
    )
    add(name, "ok", f"48 kHz mono Ogg Opus via {tool}")

    name = "speech.m4a"
    _ffmpeg_encode(speech[name], sr, root / name, ["-c:a", "aac", "-b:a", "64k", "-f", "mp4"])
    add(name, "ok", "22.05 kHz mono AAC-LC in MP4 via ffmpeg (libsndfile cannot read it)")

    name = "truncated.flac"
    x = _resample(speech[name], sr, 16000)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="FLAC", subtype="PCM_16")
    whole = buf.getvalue()
    path = add(name, "decode_error", f"16 kHz FLAC of {len(x) / 16000:.2f} s cut to its first 40 % of bytes")
    path.write_bytes(whole[: int(len(whole) * 0.4)])

    add("empty.wav", "empty", "zero bytes").write_bytes(b"")

    path = add("notaudio.wav", "decode_error", "plain text with a .wav name")
    path.write_text(_NOT_AUDIO_TEXT, encoding="utf-8")

    path = add("nans.wav", "non_finite", "2 s, 16 kHz float32 WAV, every sample NaN")
    _write_float_wav(path, np.full(2 * 16000, np.nan, dtype=np.float32), 16000)
    back, _ = sf.read(path, dtype="float32")
    if not np.isnan(back).all():
        raise RuntimeError("NaN samples did not survive a write/read round trip through soundfile")

    sf.write(
        add("silent.wav", "silent", "3 s of digital zeros, 16 kHz PCM_16"),
        np.zeros(3 * 16000, dtype=np.int16),
        16000,
        format="WAV",
        subtype="PCM_16",
    )

    shutil.copyfile(
        root / "pcm16_16k.wav",
        add("pcm16_16k_copy.wav", "duplicate", "byte-for-byte copy of pcm16_16k.wav"),
    )

    name = "long_3min.wav"
    path = add(name, "ok", f"{LONG_SECONDS} s, 16 kHz PCM_16: many sentences and voices, -60 dBFS noise pauses")
    sf.write(path, _long_speech(rng), LONG_RATE, format="WAV", subtype="PCM_16")
    meta.append({"path": name, "text": None, "speaker": "mixed"})

    name = "short_0p5s.wav"
    x = _trim(_resample(speech[name], sr, 16000))[:8000]
    x = np.concatenate([x, np.zeros(8000 - len(x), np.float32)])
    x[-160:] *= np.linspace(1.0, 0.0, 160, dtype=np.float32)  # 10 ms fade-out, no click at the cut
    path = add(name, "too_short", "0.5 s of speech, 16 kHz PCM_16")
    sf.write(path, x, 16000, format="WAV", subtype="PCM_16")

    with (root / "metadata.jsonl").open("w", encoding="utf-8") as fh:
        for row in meta:
            fh.write(json.dumps(row) + "\n")

    assert [f.name for f in files] == list(CORPUS_NAMES)
    return files


if __name__ == "__main__":
    import sys

    built = build_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/raw"))
    for corpus_file in built:
        print(f"{corpus_file.expect:>12}  {corpus_file.name}  ({corpus_file.note})")
