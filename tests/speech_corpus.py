"""A corpus big and varied enough for a tiny model to learn something a person can see: many synthetic
speakers (espeak-ng accents × voice variants × pitch and rate), sentences drawn from a vocabulary, and some
utterances with noise or reverberation added by sox. Every utterance has its transcript and speaker in
metadata.jsonl, so the same corpus serves pretraining, the speaker probe and a CTC fine-tune.

    python -m tests.speech_corpus OUT [--utterances 900] [--seed 0]

espeak-ng synthesizes about 150× faster than real time, so an hour of audio takes well under a minute.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029", "en-us-nyc", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m3", "m7", "f1", "f2", "f4")
_VOCABULARY = """
    the a one two three four five six seven eight nine ten red green blue black white yellow small big old new
    long short early late happy quiet warm cold river mountain garden kitchen window table chair door market
    bridge village forest ocean city road station bottle basket letter paper story music picture morning evening
    winter summer weather cloud rain snow wind light stone water fire bread cheese apple honey coffee doctor
    teacher farmer driver sister brother mother father friend child people animal horse dog cat bird fish
    walks runs sings reads writes opens closes carries finds keeps brings takes makes gives shows sees hears
    near under over behind beside across through after before with without and but because while every
"""
WORDS = tuple(_VOCABULARY.split())


@dataclass(frozen=True)
class Speaker:
    name: str
    voice: str  # espeak-ng voice+variant
    pitch: int  # 0-99
    speed: int  # words per minute


@dataclass(frozen=True)
class Utterance:
    path: str  # relative to the corpus folder
    text: str
    speaker: str
    effect: str  # none | noise | reverb


def speakers(count: int, rng: np.random.Generator) -> list[Speaker]:
    """`count` distinct speakers: every accent with each variant in turn, each with its own pitch and rate."""
    pairs = [(accent, variant) for variant in VARIANTS for accent in ACCENTS][:count]
    return [
        Speaker(f"spk{k:02d}", f"{accent}+{variant}", int(rng.integers(25, 75)), int(rng.integers(130, 190)))
        for k, (accent, variant) in enumerate(pairs)
    ]


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(6, 12))))


def plan(count: int, num_speakers: int, seed: int) -> tuple[list[Speaker], list[tuple[Speaker, str, str]]]:
    """The speakers, and for each utterance its speaker, text and effect (a tenth noisy, a tenth reverberant)."""
    rng = np.random.default_rng(seed)
    voices = speakers(num_speakers, rng)
    effects = rng.choice(["none"] * 8 + ["noise", "reverb"], count)
    return voices, [(voices[k % len(voices)], sentence(rng), str(effects[k])) for k in range(count)]


def synthesize(out: Path, name: str, speaker: Speaker, text: str, effect: str, seed: int) -> Utterance:
    """One utterance as a 16 kHz WAV: espeak-ng (its pitch and rate jittered a little), then sox."""
    rng = np.random.default_rng([seed, int(name[1:])])
    pitch = int(np.clip(speaker.pitch + rng.integers(-5, 6), 0, 99))
    speed = int(speaker.speed + rng.integers(-10, 11))
    raw = out / f".{name}.raw.wav"
    subprocess.run(["espeak-ng", "-v", speaker.voice, "-p", str(pitch), "-s", str(speed), "-w", str(raw), "--", text],
                   check=True, capture_output=True)  # fmt: skip
    final = out / f"{name}.wav"
    command = ["sox", "-R", str(raw), "-r", "16000", "-b", "16", str(final)]
    if effect == "reverb":
        command += ["reverb", str(int(rng.integers(30, 70)))]
    command += ["gain", "-n", str(int(rng.integers(-12, -3)))]
    subprocess.run(command, check=True, capture_output=True)
    if effect == "noise":  # white noise 15-30 dB under the speech's level
        audio, rate = sf.read(final, dtype="float32")
        power = float(np.mean(audio**2)) + 1e-12
        noise = rng.normal(0.0, np.sqrt(power / 10 ** (rng.uniform(15, 30) / 10)), audio.shape)
        sf.write(final, np.clip(audio + noise, -1, 1).astype(np.float32), rate, subtype="PCM_16")
    raw.unlink()
    return Utterance(final.name, text, speaker.name, effect)


def build(out: Path, count: int = 900, num_speakers: int = 24, seed: int = 0, workers: int = 2) -> list[Utterance]:
    """Write `count` utterances and metadata.jsonl (path, text, speaker) into `out`; returns them."""
    out.mkdir(parents=True, exist_ok=True)
    _, jobs = plan(count, num_speakers, seed)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(synthesize, out, f"u{k:05d}", s, t, e, seed) for k, (s, t, e) in enumerate(jobs)]
        utterances = [f.result() for f in futures]
    lines = [json.dumps({"path": u.path, "text": u.text, "speaker": u.speaker}) for u in utterances]
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return utterances


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--utterances", type=int, default=900)
    parser.add_argument("--speakers", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    built = build(args.out, args.utterances, args.speakers, args.seed)
    print(json.dumps({"utterances": len(built), "effects": {e: sum(u.effect == e for u in built)
                                                              for e in ("none", "noise", "reverb")}}))  # fmt: skip
    print(asdict(built[0]), file=sys.stderr)


if __name__ == "__main__":
    main()
