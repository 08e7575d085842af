"""AudioMode → the outputs a job writes, and how a model's sources make them.

Pure functions.  A *role* is one output of the protocol: ``vocals`` (AuObject),
``background`` (Object), ``bass`` (BassObject), ``drums`` (DrumObject).  Whatever
stems a model produces, the roles are built so that the outputs a mode writes sum
back to the input (before encoding):

* 2-stem modes: vocals = the model's vocals; background = every other source.
* MusicMode: vocals, bass, drums as the model gives them; background = everything
  else (``other``, and ``guitar`` + ``piano`` for a 6-stem model).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import CIError

MODES: dict[str, tuple[str, ...]] = {
    "IsAudio": ("vocals",),
    "IsBackground": ("background",),
    "AudioAndBackground": ("vocals", "background"),
    "MusicMode": ("vocals", "background", "bass", "drums"),
}
ROLE_ORDER = ("vocals", "background", "bass", "drums")
# the protocol node each role is written to
ROLE_NODE = {"vocals": "AuObject", "background": "Object", "bass": "BassObject", "drums": "DrumObject"}


def roles_for_mode(mode: str) -> tuple[str, ...]:
    try:
        return MODES[mode]
    except KeyError:
        raise CIError("InvalidArgument", f"AudioMode {mode!r} is not one of {', '.join(MODES)}",
                      resource="Operation.VoiceSeparate.AudioMode") from None


def check_model_supports(mode: str, sources: Sequence[str], model_name: str) -> None:
    """MusicMode needs separate bass and drums; every mode needs vocals."""
    needed = {"vocals"} | ({"bass", "drums"} if mode == "MusicMode" else set())
    missing = sorted(needed - set(sources))
    if missing:
        hint = (" MusicMode needs a 4-stem Demucs model (e.g. htdemucs); "
                "see `separator models list` and models/README.md to install one."
                if mode == "MusicMode" else "")
        raise CIError("ModelUnavailable",
                      f"model {model_name!r} has no {', '.join(missing)} source "
                      f"(it separates {', '.join(sources)}).{hint}")


def combine(stems: Mapping[str, np.ndarray], roles: Sequence[str], mode: str) -> dict[str, np.ndarray]:
    """Build the requested roles from a block of model sources (each (frames, channels))."""
    own = {"vocals"} | ({"bass", "drums"} if mode == "MusicMode" else set())
    out: dict[str, np.ndarray] = {}
    for role in roles:
        if role == "background":
            rest = [v for k, v in stems.items() if k not in own]
            out[role] = np.sum(rest, axis=0, dtype=np.float32) if len(rest) > 1 else rest[0]
        else:
            out[role] = stems[role]
    return out
