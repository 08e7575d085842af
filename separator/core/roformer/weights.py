"""Loading RoFormer weights safely.

``torch.load(path, map_location='cpu', weights_only=True)`` only: a file that needs arbitrary
unpickling is refused.  Accepted layouts: a plain state dict (what MSST's ``--store_dir``
checkpoints and the community ``.ckpt`` files are), or a dict wrapping one under
``state_dict`` / ``model_state_dict`` / ``model`` / ``state`` (training checkpoints; other
entries such as optimizer state are ignored).  A ``module.`` (DataParallel) or ``model.``
(Lightning) prefix shared by every key is removed.  Then keys and shapes must equal the
model's exactly; the rotary ``freqs`` may be absent (they are deterministic) and Mel-Band
RoFormer's derived band-layout buffers, which some older exports saved, are accepted when they
equal the model's own.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Mapping

import torch
from torch import nn

from .errors import RoformerWeightsError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state")
_PREFIXES = ("module.", "model.")
_MEL_DERIVED = ("freq_indices", "freqs_per_band", "num_freqs_per_band", "num_bands_per_freq")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped and unprefixed (on the CPU)."""
    path = os.fspath(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RoformerWeightsError(f"model weights not found: {path}") from None
    except IsADirectoryError:
        raise RoformerWeightsError(f"model weights path is a directory: {path}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError, OSError) as e:
        raise RoformerWeightsError(
            f"cannot load {path} as a torch checkpoint of plain tensors (only weights_only "
            f"loading is allowed; re-save the file with torch.save(model.state_dict())): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: Any, where: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` dict from what ``torch.load`` returned (see the module doc)."""
    sd = obj
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping) and _is_state_dict(obj[key]):
                sd = obj[key]
                break
        else:
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            raise RoformerWeightsError(
                f"{where} is a dict but neither a state dict of tensors nor one wrapped under "
                f"{'/'.join(_WRAPPER_KEYS)} (top-level keys: {keys})")
    elif not isinstance(obj, Mapping):
        raise RoformerWeightsError(
            f"{where} holds a {type(obj).__name__}, not a state dict of tensors")
    sd = dict(sd)
    if not sd:
        raise RoformerWeightsError(f"{where} holds an empty state dict")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def _is_state_dict(d: Mapping) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (strictly) and return the model."""
    path = os.fspath(path)
    load_state(model, read_state_dict(path), where=path)
    return model


def load_state(model: nn.Module, sd: Mapping[str, torch.Tensor], where: str = "the checkpoint") -> None:
    """Strictly load an unwrapped state dict (see the module doc for the two tolerances)."""
    sd = dict(sd)
    expected = model.state_dict()
    derived = getattr(model, "band_layout", None)
    if callable(derived):
        layout = derived()
        for key in _MEL_DERIVED:
            if key in sd and key not in expected:
                theirs, ours = sd.pop(key), layout[key]
                if theirs.shape != ours.shape or not torch.equal(theirs.to(ours.dtype), ours):
                    raise RoformerWeightsError(
                        f"{where}: its {key!r} buffer describes another mel band layout than the "
                        f"config (num_bands / sample_rate / stft_n_fft / stereo differ)")
    missing = [k for k in expected if k not in sd and not k.endswith("rotary_embed.freqs")]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:5])})")
        raise RoformerWeightsError(
            f"{where} does not fit the model its config describes: {'; '.join(parts)}. "
            f"Check that the .yaml is the one published with this .ckpt")
    for key, value in sd.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise RoformerWeightsError(
                f"{where} does not fit the model its config describes: {key} has shape "
                f"{tuple(value.shape)}, the config gives {tuple(expected[key].shape)}. "
                f"Check that the .yaml is the one published with this .ckpt")
        if not value.is_floating_point() and expected[key].is_floating_point():
            raise RoformerWeightsError(f"{where}: {key} holds {value.dtype} values, not floats")
    model.load_state_dict(sd, strict=False)
