"""The output codecs of VoiceSeparate's ``AudioConfig`` and their rules.

One table, read by the request validator (what a request may ask for) and by the
encoder (how ffmpeg produces it).  Rules follow ``spec §1.6``; where the spec is
UNCONFIRMED the choice is documented in the README's behaviour notes.
"""
from __future__ import annotations

from dataclasses import dataclass

ALL_SAMPLERATES = (8000, 11025, 22050, 32000, 44100, 48000, 96000)
BITRATE_RANGE_KBPS = (8, 1000)  # inclusive, spec §1.6


@dataclass(frozen=True)
class Codec:
    name: str                      # protocol name (lower case)
    ext: str                       # what ${ext} becomes
    encoder: str                   # ffmpeg encoder
    container: str                 # ffmpeg muxer (-f)
    samplerates: tuple[int, ...]   # allowed by the protocol
    channels: tuple[int, ...]      # allowed by the protocol
    lossless: bool = False         # bitrate is ignored
    max_bitrate_kbps: int | None = None  # encoder's ceiling; higher requests are clamped
    default_samplerate: int = 44100
    needs_amr: bool = False        # needs an ffmpeg with libopencore_amrnb
    #: the sample formats the file can hold (our ``SampleFormat`` extension; lossy codecs: none)
    sample_formats: tuple[str, ...] = ()


CODECS: dict[str, Codec] = {
    "aac": Codec("aac", "m4a", "aac", "ipod",
                 tuple(r for r in ALL_SAMPLERATES if r != 8000), (1, 2, 4, 5, 6, 8),
                 max_bitrate_kbps=512),
    "mp3": Codec("mp3", "mp3", "libmp3lame", "mp3",
                 tuple(r for r in ALL_SAMPLERATES if r not in (8000, 96000)), (1, 2),
                 max_bitrate_kbps=320),
    "flac": Codec("flac", "flac", "flac", "flac",
                  tuple(r for r in ALL_SAMPLERATES if r != 8000), (1, 2, 4, 5, 6, 8),
                  lossless=True, sample_formats=("s16", "s24")),
    "amr": Codec("amr", "amr", "libopencore_amrnb", "amr", (8000,), (1,),
                 max_bitrate_kbps=12, default_samplerate=8000, needs_amr=True),
    "wav": Codec("wav", "wav", "pcm_s16le", "wav", ALL_SAMPLERATES, (1, 2, 4, 5, 6, 8),
                 lossless=True, sample_formats=("s16", "s24", "f32")),
}

MUSIC_MODE_CODECS = ("mp3", "wav", "aac")
#: our ``AudioConfig.SampleFormat`` extension: 16- or 24-bit integers, or 32-bit float samples
SAMPLE_FORMATS = ("s16", "s24", "f32")
DEFAULT_CODEC = "aac"

# AMR-NB's eight modes in bit/s; a requested bitrate maps to the highest mode not above it
# (8 kbps -> 7.95, 10 -> 7.95, 11 -> 10.2, >= 12.2 -> 12.2).
AMR_NB_BITRATES = (4750, 5150, 5900, 6700, 7400, 7950, 10200, 12200)


def get_codec(name: str) -> Codec:
    """Look a codec up case-insensitively (the Go SDK sends ``AAC``). KeyError if unknown."""
    return CODECS[name.strip().lower()]

