"""A small labelled corpus for fine-tuning tests: digit strings spoken by three espeak-ng voices, prepared into
train and validation shard folders with text, speaker and label (the first digit) columns."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.corpus import speak

VOICES = ("en", "en+f3", "en+m3")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_labelled_corpus(root: Path, utterances_per_voice: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """(train shards, valid shards): the first 3/4 of each voice's utterances train, the rest validate."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict[str, str]]] = {"train": [], "valid": []}
    for voice in VOICES:
        for k in range(utterances_per_voice):
            words = [DIGITS[d] for d in rng.integers(0, 10, 4)]
            split = "train" if k < utterances_per_voice * 3 // 4 else "valid"
            path = root / "raw" / split / f"{voice.replace('+', '_')}_{k}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            speak(" ".join(words), voice, path, speed=150)
            rows[split].append({"path": path.name, "text": " ".join(words), "speaker": voice, "label": words[0]})
    folders = []
    for split, entries in rows.items():
        raw = root / "raw" / split
        with open(raw / "metadata.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "text", "speaker", "label"])
            writer.writeheader()
            writer.writerows(entries)
        out = root / f"{split}-shards"
        command = [sys.executable, "-m", "w2v", "prepare", str(raw), "--out", str(out), "--metadata",
                   str(raw / "metadata.csv"), "--min-seconds", "0.5", "--workers", "1", "--no-measure"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
        folders.append(out)
    return folders[0], folders[1]
