"""What the VoiceSeparate protocol says about modes, outputs and job states: each fact once.

Every layer reads it from here (the request validator, the engine, the job store, the
command line), so that no two copies can drift apart.

* An **AudioMode** names the outputs a job writes.  A *role* is one output: ``vocals``
  (written to ``AuObject``), ``background`` (``Object``), ``bass`` (``BassObject``), ``drums``
  (``DrumObject``).  Results list them in :data:`ROLES` order (vocals first, as in the cloud's
  callback example).
* A job is ``Submitted``, ``Running``, then ``Success`` or ``Failed``; a waiting job can be
  cancelled (``Cancel``); a list filter may ask for the jobs of a paused queue (``Pause``).
"""
from __future__ import annotations

from typing import Literal

from .errors import invalid_argument

AudioMode = Literal["IsAudio", "IsBackground", "AudioAndBackground", "MusicMode"]
AUDIO_MODES: tuple[str, ...] = ("IsAudio", "IsBackground", "AudioAndBackground", "MusicMode")

#: the outputs, in the order results list them
ROLES: tuple[str, ...] = ("vocals", "background", "bass", "drums")
#: the Output node each role is written to
ROLE_NODES: dict[str, str] = {"vocals": "AuObject", "background": "Object", "bass": "BassObject",
                              "drums": "DrumObject"}
#: what each mode produces
MODE_ROLES: dict[str, tuple[str, ...]] = {
    "IsAudio": ("vocals",),
    "IsBackground": ("background",),
    "AudioAndBackground": ("vocals", "background"),
    "MusicMode": ("vocals", "background", "bass", "drums"),
}
#: Output nodes a mode cannot do without (beyond the general "Object or AuObject" rule)
MODE_NEEDS: dict[str, tuple[str, ...]] = {
    "IsAudio": ("AuObject",),
    "IsBackground": ("Object",),
    "AudioAndBackground": ("AuObject", "Object"),
    "MusicMode": (),
}
#: the roles a mode writes as the model gives them; its background is the input minus these
OWNED_ROLES: dict[str, tuple[str, ...]] = {mode: ("vocals", "bass", "drums") if mode == "MusicMode" else ("vocals",)
                                           for mode in AUDIO_MODES}

JOB_STATES: tuple[str, ...] = ("Submitted", "Running", "Success", "Failed", "Pause", "Cancel")
#: states a job ends in by running (the result is known; a callback is sent)
FINISHED_STATES: tuple[str, ...] = ("Success", "Failed")
#: states no job leaves
FINAL_STATES: tuple[str, ...] = ("Success", "Failed", "Cancel")


def audio_mode(value: str, resource: str = "Operation.VoiceSeparate.AudioMode") -> str:
    """``value`` in its canonical spelling (modes are matched case-insensitively), or
    ``InvalidArgument`` naming the allowed ones."""
    for mode in AUDIO_MODES:
        if isinstance(value, str) and value.strip().lower() == mode.lower():
            return mode
    raise invalid_argument(f"AudioMode {value!r} is not one of {', '.join(AUDIO_MODES)}", resource=resource)


def roles_for_mode(mode: str) -> tuple[str, ...]:
    """The roles ``mode`` writes, in result order (``InvalidArgument`` for an unknown mode)."""
    return MODE_ROLES[audio_mode(mode)]


__all__ = ["AUDIO_MODES", "AudioMode", "FINAL_STATES", "FINISHED_STATES", "JOB_STATES", "MODE_NEEDS",
           "MODE_ROLES", "OWNED_ROLES", "ROLES", "ROLE_NODES", "audio_mode", "roles_for_mode"]
