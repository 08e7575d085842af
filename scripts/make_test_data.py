#!/usr/bin/env python
"""Build ``tests/data/``: short real mixtures with exact stems, and small format fixtures.

Only redistributable recordings from the development audio folder (``../shared/data`` beside
the repository) are used: public domain, CC BY 3.0 / 4.0 -- never the research-only sets
(MUSDB18, SiSEC, MIR-1K, iKala, CC BY-NC, ...).  Every source is checked against the
folder's ``INVENTORY.tsv`` (sha256) before use, and its licence is declared below and in
``tests/data/README.md`` (with the attribution each licence asks for)::

    python scripts/make_test_data.py                       # ../shared/data -> tests/data
    python scripts/make_test_data.py --shared DIR --out DIR --ffmpeg PATH

Deterministic: fixed excerpts (offsets in samples), levels, fades; no randomness.  Decoding,
resampling (speech to 44.1 kHz) and the lossy encoders are ffmpeg's, so the same ffmpeg
build gives the same bytes (the committed files were made with Debian 12's ffmpeg 5.1);
another build may differ in the last bits of the resampled speech and in the lossy files.

**Mixtures** (``mixtures/<name>/{vocals,accompaniment,mixture}.flac``, 44.1 kHz stereo,
16-bit FLAC): a voice (mono, centred: left = right) over a real instrumental piece.  Both
stems are quantised to 16-bit integers whose two lowest bits are zero (14-bit resolution,
which FLAC stores at no cost: the folder stays small) and ``mixture`` is their exact integer
sum -- so the decoded mixture equals the sum of the decoded stems bit for bit.  The builder
checks that sum does not clip and re-reads every file to verify it.

**Format fixtures** (``formats/``): short excerpts in the containers the media tests need
(Ogg Vorbis stereo, with and without cover art, 16 kHz mono speech, MP3, a 5-stream NI-style
``.stem.mp4``).  WAV inputs are not stored: the tests write them from the FLAC files.
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 44100
STEP = 4                 # stems are multiples of 4 in 16-bit: 14-bit resolution
PEAK_DBFS = -1.0         # the mixture's peak
FADE_S = 0.02            # raised-cosine fade in/out on every excerpt
ALLOWED = ("Public Domain", "CC BY 3.0", "CC BY 4.0")


@dataclass(frozen=True)
class Source:
    path: str            # relative to the shared data folder
    licence: str
    credit: str          # attribution: author, title, where from


SOURCES = {
    # ---- voices
    "vocadito_1": Source(
        "mirdata-test-resources/vocadito/Audio/vocadito_1.wav", "CC BY 4.0",
        "vocadito track 1 (solo singing, Tagalog), from \"vocadito: A dataset of solo vocals with f0, note, "
        "and lyric annotations\" by Rachel M. Bittner, Katherine Pasalo, Juan Jose Bosch, Gabriel "
        "Meseguer-Brocal and David Rubinstein (2021), https://zenodo.org/record/5578807; file taken from "
        "the mirdata test resources, https://github.com/mir-dataset-loaders/mirdata (commit b95bf38)"),
    "librispeech_3436": Source(
        "librosa-data/3436-172162-0000.hq.ogg", "CC BY 4.0",
        "LibriSpeech 3436-172162-0000: \"The Age of Chivalry\", chapter 18: Perceval, read by Anders "
        "Lankford; LibriSpeech SLR12 collection, https://www.openslr.org/12/ (via librosa/data, commit 450cdd8)"),
    "librispeech_198": Source(
        "librosa-data/198-209-0000.hq.ogg", "CC BY 4.0",
        "LibriSpeech 198-209-0000: \"Sense and Sensibility\", chapter 18, by Jane Austen, read by Heather "
        "Barnett; LibriSpeech SLR12 collection, https://www.openslr.org/12/ (via librosa/data, commit 450cdd8)"),
    "ljspeech_050_0131": Source(
        "speechbrain-test-samples/TTS/LJ050-0131.wav", "Public Domain",
        "LJ Speech LJ050-0131 (read speech, public domain), via the SpeechBrain test samples, "
        "https://github.com/speechbrain/speechbrain (commit 9c826ef, tests/samples/TTS/)"),
    # ---- music
    "vibe_ace": Source(
        "librosa-data/Kevin_MacLeod_-_Vibe_Ace.hq.ogg", "CC BY 3.0",
        "\"Vibe Ace\" by Kevin MacLeod, licensed under CC BY 3.0 "
        "(https://creativecommons.org/licenses/by/3.0/); from the Free Music Archive, "
        "https://freemusicarchive.org/music/Kevin_MacLeod/Jazz_Sampler/Vibe_Ace (via librosa/data)"),
    "hungarian_dance_5": Source(
        "librosa-data/Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra).hq.ogg",
        "Public Domain",
        "Hungarian Dance No. 5 by Johannes Brahms, US Army Strings (public domain); from Musopen, "
        "https://musopen.org/music/43805-hungarian-dance-no-5-in-f-sharp-minor-woo-1-string-orchestra-arr/ "
        "(via librosa/data)"),
    "sugar_plum": Source(
        "librosa-data/Kevin_MacLeod_-_P_I_Tchaikovsky_Dance_of_the_Sugar_Plum_Fairy.hq.ogg", "CC BY 3.0",
        "\"P. I. Tchaikovsky: Dance of the Sugar Plum Fairy\" by Kevin MacLeod, licensed under CC BY 3.0 "
        "(https://creativecommons.org/licenses/by/3.0/); from the Free Music Archive, "
        "https://freemusicarchive.org/music/Kevin_MacLeod/Classical_Sampler/Dance_of_the_Sugar_Plum_Fairy "
        "(via librosa/data)"),
    "lets_go_fishin": Source(
        "librosa-data/Karissa_Hobbs_-_Lets_Go_Fishin.hq.ogg", "CC BY 3.0",
        "\"Let's Go Fishin'\" by Karissa Hobbs, licensed under CC BY 3.0 "
        "(https://creativecommons.org/licenses/by/3.0/); from the Free Music Archive, "
        "https://freemusicarchive.org/music/Karissa_Hobbs/Age_of_Flowers/09_Lets_Go_Fishin (via librosa/data)"),
}


@dataclass(frozen=True)
class Mix:
    name: str
    voice: str
    voice_start: float   # seconds into the voice recording
    voice_at: float      # where the voice starts in the mixture (seconds)
    music: str
    music_start: float   # seconds into the music recording
    voice_db: float      # voice RMS relative to the accompaniment's, over the excerpt
    seconds: float = 7.5


MIXTURES = (
    Mix("vocadito-vibeace", "vocadito_1", 1.0, 0.0, "vibe_ace", 30.0, -2.0),
    Mix("librispeech-brahms", "librispeech_3436", 0.0, 0.0, "hungarian_dance_5", 2.0, 0.0),
    Mix("ljspeech-sugarplum", "ljspeech_050_0131", 0.0, 0.2, "sugar_plum", 45.0, -3.0),
)


# --------------------------------------------------------------------------- helpers
class Builder:
    def __init__(self, shared: Path, out: Path, ffmpeg: str) -> None:
        self.shared, self.out, self.ffmpeg = shared, out, ffmpeg
        self.inventory = {row["path"]: row for row in
                          csv.DictReader((shared / "INVENTORY.tsv").open(), delimiter="\t")}
        self.rows: list[dict[str, str]] = []

    def source(self, key: str) -> Path:
        src = SOURCES[key]
        assert src.licence in ALLOWED, (key, src.licence)
        path = self.shared / src.path
        want = self.inventory[src.path]["sha256"]
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != want:
            raise SystemExit(f"{path}: sha256 {got} differs from INVENTORY.tsv ({want})")
        return path

    def ffmpeg_run(self, args: list[str], data: bytes | None = None) -> bytes:
        proc = subprocess.run([self.ffmpeg, "-hide_banner", "-nostdin", "-v", "error", *args],
                              input=data, capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(f"ffmpeg {' '.join(args)}: {proc.stderr.decode(errors='replace')[-800:]}")
        return proc.stdout

    def decode(self, key: str, channels: int = 2, sr: int = SR) -> np.ndarray:
        """The whole recording as float32 ``(frames, channels)`` (excerpts are cut in samples)."""
        raw = self.ffmpeg_run(["-i", str(self.source(key)), "-map", "0:a:0", "-f", "f32le",
                               "-ac", str(channels), "-ar", str(sr), "-"])
        return np.frombuffer(raw, np.float32).reshape(-1, channels).astype(np.float64)

    def write(self, rel: str, args_in: list[str], data: bytes | None, args_out: list[str],
              sources: list[str], what: str) -> Path:
        dst = self.out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        self.ffmpeg_run(["-y", *args_in, *args_out, "-fflags", "+bitexact", "-flags", "+bitexact", "-map_metadata", "-1",
                         str(dst)],
                        data)
        licences = sorted({SOURCES[s].licence for s in sources})
        self.rows.append({"file": rel, "bytes": str(dst.stat().st_size),
                          "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
                          "licence": " + ".join(licences), "sources": " + ".join(sources), "what": what})
        return dst

    def write_flac(self, rel: str, pcm: np.ndarray, sources: list[str], what: str) -> Path:
        assert pcm.dtype == np.int16 and pcm.shape[1] == 2
        return self.write(rel, ["-f", "s16le", "-ar", str(SR), "-ac", "2", "-i", "-"], pcm.tobytes(),
                          ["-c:a", "flac", "-compression_level", "12", *tags(sources)], sources, what)

    def read_s16(self, path: Path) -> np.ndarray:
        raw = self.ffmpeg_run(["-i", str(path), "-f", "s16le", "-ac", "2", "-ar", str(SR), "-"])
        return np.frombuffer(raw, np.int16).reshape(-1, 2)


def tags(sources: list[str]) -> list[str]:
    """Attribution carried in the file itself (CC BY asks for it wherever the work goes)."""
    text = " | ".join(f"{SOURCES[s].credit} [{SOURCES[s].licence}]" for s in sources)
    return ["-metadata", f"comment=separator test data (tests/data/README.md) from: {text}"]


def excerpt(x: np.ndarray, start: float, seconds: float) -> np.ndarray:
    a = int(round(start * SR))
    n = int(round(seconds * SR))
    out = x[a:a + n]
    if len(out) != n:
        raise SystemExit(f"excerpt {start}+{seconds} s runs past the end ({len(x) / SR:.2f} s)")
    return fade(out.copy())


def fade(x: np.ndarray) -> np.ndarray:
    n = int(FADE_S * SR)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
    x[:n] *= ramp[:, None]
    x[-n:] *= ramp[::-1, None]
    return x


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2)))


def quantise(x: np.ndarray) -> np.ndarray:
    """float (full scale 1.0) -> int32 multiples of STEP."""
    return (np.round(x * 32768 / STEP) * STEP).astype(np.int32)


# --------------------------------------------------------------------------- mixtures
def build_mixture(b: Builder, m: Mix) -> dict[str, np.ndarray]:
    n = int(round(m.seconds * SR))
    music = excerpt(b.decode(m.music), m.music_start, m.seconds)
    voice_rec = b.decode(m.voice, channels=1)                       # mono, resampled to 44.1 kHz
    at = int(round(m.voice_at * SR))
    v = excerpt(voice_rec, m.voice_start, min(m.seconds - m.voice_at, len(voice_rec) / SR - m.voice_start))
    voice = np.zeros((n, 2))
    voice[at:at + len(v)] = v                                       # centred: left = right
    voice *= rms(music) / rms(voice) * 10 ** (m.voice_db / 20)
    gain = 10 ** (PEAK_DBFS / 20) / np.abs(voice + music).max()
    vq, aq = quantise(voice * gain), quantise(music * gain)
    mq = vq + aq
    peak = int(np.abs(mq).max())
    if peak > 32767 or np.abs(vq).max() > 32767 or np.abs(aq).max() > 32767:
        raise SystemExit(f"{m.name}: clips ({peak})")
    stems = {"vocals": vq.astype(np.int16), "accompaniment": aq.astype(np.int16), "mixture": mq.astype(np.int16)}
    srcs = {"vocals": [m.voice], "accompaniment": [m.music], "mixture": [m.voice, m.music]}
    for stem, pcm in stems.items():
        path = b.write_flac(f"mixtures/{m.name}/{stem}.flac", pcm, srcs[stem],
                            f"{stem} of mixture {m.name} ({m.seconds:g} s, 44.1 kHz stereo)")
        if not np.array_equal(b.read_s16(path), pcm):
            raise SystemExit(f"{path}: does not decode to what was written")
    vs = 20 * np.log10(rms(vq) / rms(aq))
    print(f"{m.name}: voice/accompaniment {vs:+.1f} dB, mixture peak {20 * np.log10(peak / 32768):.2f} dBFS")
    return {k: v.astype(np.float32) / 32768 for k, v in stems.items()}


# --------------------------------------------------------------------------- format fixtures
def cover_jpeg(b: Builder, tmp: Path) -> bytes:
    """A generated 64x64 test-pattern JPEG (no third-party artwork)."""
    p = tmp / "cover.jpg"
    b.ffmpeg_run(["-y", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=1:duration=1", "-frames:v", "1",
                  "-c:v", "mjpeg", "-q:v", "5", "-fflags", "+bitexact", "-flags", "+bitexact", "-f", "image2", str(p)])
    return p.read_bytes()


def picture_block(jpeg: bytes, width: int = 64, height: int = 64) -> str:
    """Vorbis-comment METADATA_BLOCK_PICTURE (a base64 FLAC picture block): front cover."""
    mime, desc = b"image/jpeg", b"Cover (front)"
    blk = (struct.pack(">II", 3, len(mime)) + mime + struct.pack(">I", len(desc)) + desc
           + struct.pack(">IIIII", width, height, 24, 0, len(jpeg)) + jpeg)
    return base64.b64encode(blk).decode()


def f32_input(channels: int = 2, sr: int = SR) -> list[str]:
    return ["-f", "f32le", "-ar", str(sr), "-ac", str(channels), "-i", "-"]


def build_formats(b: Builder, first: dict[str, np.ndarray], first_name: str, tmp: Path) -> None:
    song = b.decode("lets_go_fishin")
    x = excerpt(song, 30.0, 8.0).astype(np.float32)
    b.write("formats/song.ogg", f32_input(), x.tobytes(),
            ["-c:a", "libvorbis", "-q:a", "1", *tags(["lets_go_fishin"])], ["lets_go_fishin"],
            "8 s of a song with vocals, Ogg Vorbis 44.1 kHz stereo")
    x = excerpt(song, 60.0, 6.0).astype(np.float32)
    b.write("formats/song.mp3", f32_input(), x.tobytes(),
            ["-c:a", "libmp3lame", "-b:a", "128k", *tags(["lets_go_fishin"])], ["lets_go_fishin"],
            "6 s of a song with vocals, MP3 128 kbps CBR 44.1 kHz stereo (Xing/LAME header)")

    x = excerpt(b.decode("vibe_ace"), 10.0, 3.0).astype(np.float32)
    b.write("formats/cover.ogg", f32_input(), x.tobytes(),
            ["-c:a", "libvorbis", "-q:a", "0", *tags(["vibe_ace"]),
             "-metadata", f"METADATA_BLOCK_PICTURE={picture_block(cover_jpeg(b, tmp))}"], ["vibe_ace"],
            "3 s of jazz, Ogg Vorbis 44.1 kHz stereo with an embedded cover picture (a generated "
            "64x64 test-pattern JPEG)")

    speech = b.decode("librispeech_198", channels=1, sr=16000)
    a = int(0.5 * 16000)
    x = speech[a:a + 5 * 16000].astype(np.float32)
    b.write("formats/speech_16k_mono.ogg", f32_input(1, 16000), x.tobytes(),
            ["-c:a", "libvorbis", "-q:a", "2", *tags(["librispeech_198"])], ["librispeech_198"],
            "5 s of read speech, Ogg Vorbis 16 kHz mono")

    # NI-stems-like mp4: 0 = mixture, 1-3 = the accompaniment in three bands, 4 = vocals
    n = 4 * SR
    acc, voc = first["accompaniment"][:n].astype(np.float64), first["vocals"][:n].astype(np.float64)
    spec = np.fft.rfft(acc, axis=0)
    f = np.fft.rfftfreq(n, 1 / SR)[:, None]
    low = np.fft.irfft(spec * (f < 250), n, axis=0)
    mid = np.fft.irfft(spec * ((f >= 250) & (f < 2500)), n, axis=0)
    high = acc - low - mid
    streams = {"mixture": acc + voc, "accompaniment below 250 Hz": low,
               "accompaniment 250 Hz to 2.5 kHz": mid, "accompaniment above 2.5 kHz": high, "vocals": voc}
    args: list[str] = []
    for i, s in enumerate(streams.values()):
        w = tmp / f"stream{i}.f32"
        w.write_bytes(fade(s.copy()).astype(np.float32).tobytes())
        args += ["-f", "f32le", "-ar", str(SR), "-ac", "2", "-i", str(w)]
    out = [a for i in range(len(streams)) for a in ("-map", f"{i}:a")]
    srcs = [MIXTURES[0].voice, MIXTURES[0].music]
    b.write("formats/song.stem.mp4", args, None,
            [*out, "-c:a", "aac", "-b:a", "48k", *tags(srcs)], srcs,
            f"4 s of mixture {first_name} as 5 AAC streams (NI-stems-like: mixture, three bands of the "
            "accompaniment, vocals)")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data")
    ap.add_argument("--ffmpeg", default="ffmpeg")
    args = ap.parse_args(argv)
    b = Builder(args.shared, args.out, args.ffmpeg)
    for sub in ("mixtures", "formats"):
        for p in sorted((args.out / sub).rglob("*"), reverse=True) if (args.out / sub).is_dir() else ():
            p.unlink() if p.is_file() else p.rmdir()
    built = [build_mixture(b, m) for m in MIXTURES]
    with tempfile.TemporaryDirectory() as tmp:
        build_formats(b, built[0], MIXTURES[0].name, Path(tmp))
    version = b.ffmpeg_run(["-version"]).decode().splitlines()[0]
    with (args.out / "MANIFEST.tsv").open("w", newline="") as fh:
        fh.write(f"# written by scripts/make_test_data.py with {version}\n")
        w = csv.DictWriter(fh, fieldnames=list(b.rows[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(b.rows)
    total = sum(int(r["bytes"]) for r in b.rows)
    print(f"{len(b.rows)} files, {total / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
