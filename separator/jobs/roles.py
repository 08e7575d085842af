"""How a model's sources make the roles a mode writes.

Pure functions.  Whatever stems a model produces, the roles are built so that the outputs a
mode writes sum back to the input (before encoding):

* 2-stem modes: vocals = the model's vocals; background = the mixture minus the vocals.
* MusicMode: vocals, bass, drums as the model gives them; background = the mixture minus
  those three, i.e. everything else (``other``, and ``guitar`` + ``piano`` for a 6-stem
  model) plus whatever the model left unassigned.

Taking the background as the *residual* rather than the sum of the remaining sources makes
the outputs sum back to the input exactly, whatever the model (Demucs' sources only sum to
the mixture approximately); for a model whose sources do sum to the mixture it is the same.
Which roles a mode writes is the protocol's (:mod:`separator.protocol`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ModelUnavailable
from ..protocol import OWNED_ROLES


def check_model_supports(mode: str, sources: Sequence[str], model_name: str) -> None:
    """MusicMode needs separate bass and drums; every mode needs vocals."""
    needed = {"vocals"} | ({"bass", "drums"} if mode == "MusicMode" else set())
    missing = sorted(needed - set(sources))
    if missing:
        hint = (" MusicMode needs a 4-stem Demucs model (e.g. htdemucs); "
                "see `separator models list` and models/README.md to install one."
                if mode == "MusicMode" else "")
        raise ModelUnavailable(f"model {model_name!r} has no {', '.join(missing)} source "
                               f"(it separates {', '.join(sources)}).{hint}")


def combine(stems: Mapping[str, np.ndarray], roles: Sequence[str], mode: str,
            mixture: np.ndarray) -> dict[str, np.ndarray]:
    """Build the requested roles from a block of model sources and the same frames of the
    mixture (each ``(frames, channels)`` float32).  The owned sources are subtracted in the
    protocol's fixed order, so the background's rounding (and the encoded bytes) never depend
    on the process."""
    out: dict[str, np.ndarray] = {}
    for role in roles:
        if role == "background":
            rest = mixture.astype(np.float32, copy=True)
            for name in OWNED_ROLES[mode]:
                rest -= stems[name]
            out[role] = rest
        else:
            out[role] = stems[role]
    return out
