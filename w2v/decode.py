"""Decode one audio file to float32 samples: libsndfile first, PyAV (FFmpeg) for what it cannot open.

libsndfile reads WAV (PCM, float, µ-law, A-law), FLAC, OGG Vorbis/Opus and MP3; PyAV covers containers such
as M4A/AAC and WebM. A file libsndfile recognises but cannot read to the end is corrupt: no fallback hides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf

from w2v.errors import CorruptAudioError

# Formats whose header states the exact frame count, so a short read means a truncated file.
_EXACT_LENGTH_FORMATS = {"WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64", "CAF", "AU"}


@dataclass(frozen=True)
class Decoded:
    """Audio as decoded: float32 (frames, channels) at the file's own rate."""

    samples: np.ndarray
    sample_rate: int
    decoder: str
    format: str
    subtype: str


def decode(source: str | BinaryIO, name: str) -> Decoded:
    """Decode a whole file (a local path or a seekable file object).

    Raises CorruptAudioError naming `name` when neither decoder can read it.
    """
    try:
        file = sf.SoundFile(_rewound(source))
    except (sf.LibsndfileError, RuntimeError) as sndfile_error:
        try:
            return _decode_with_av(_rewound(source))
        except Exception as av_error:  # PyAV raises many types; all mean "cannot decode"
            raise CorruptAudioError(
                f"{name}: not decodable (libsndfile: {_one_line(sndfile_error)}; ffmpeg: {_one_line(av_error)})"
            ) from av_error
    with file:
        try:
            samples = file.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise CorruptAudioError(f"{name}: {file.format} data unreadable ({_one_line(error)})") from error
        if file.format in _EXACT_LENGTH_FORMATS and samples.shape[0] < file.frames:
            raise CorruptAudioError(
                f"{name}: truncated {file.format}: header says {file.frames} frames, only {samples.shape[0]} decode"
            )
        return Decoded(samples, int(file.samplerate), "soundfile", file.format, file.subtype)


def _decode_with_av(source: str | BinaryIO) -> Decoded:
    with av.open(source, mode="r") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        # Planar float keeps each channel separate and the file's own rate: resampling is soxr's job.
        converter = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        rate = 0
        for frame in container.decode(stream):
            for converted in converter.resample(frame):
                rate = converted.sample_rate
                chunks.append(converted.to_ndarray())
        for converted in converter.resample(None):
            chunks.append(converted.to_ndarray())
        codec = stream.codec_context.name
        container_format = container.format.name
    if not chunks or rate == 0:
        raise ValueError("no audio frames")
    samples = np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False)
    return Decoded(np.ascontiguousarray(samples), rate, "pyav", container_format, codec)


def _rewound(source: str | BinaryIO) -> str | BinaryIO:
    if not isinstance(source, str):
        source.seek(0)
    return source


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
