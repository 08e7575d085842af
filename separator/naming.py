"""Output file names: templates with ``{placeholders}``, one set for every command that picks names.

A template is a relative path with Python ``str.format`` fields (no format specs or attribute
access)::

    {model}/{track}/{stem}.{ext}                   ``separator separate`` (and Separator.separate_files)
    {rel_dir}/{name}/{stem}.{ext}                  ``separator batch``

==============  ==========================================================================
``{track}``     the input's file name without its extension (``song`` for ``song.mp3``)
``{name}``      the same as ``{track}``
``{stem}``      the output's name: ``vocals``, ``background``; in MusicMode ``vocals``,
                ``other``, ``bass``, ``drums`` (there the background is what is left after
                voice, bass *and* drums, not everything but the voice, so it is named apart)
``{role}``      the protocol's role: ``vocals``, ``background``, ``bass`` or ``drums``
``{ext}``       the output codec's extension (``m4a`` for aac, ``mp3``, ``flac``, ``amr``, ``wav``)
``{model}``     the model's name (``spleeter-2stems``, ``htdemucs`` …): re-running with another
                model never overwrites the first run's files
``{mode}``      the AudioMode (``AudioAndBackground`` …)
``{rel_dir}``   batch: the input's folder relative to SOURCE (``''`` for a file at the top;
                empty path segments are dropped)
``{input_ext}`` the input's extension without the dot (``mp3``); use it when one folder holds
                ``song.mp3`` and ``song.wav``
==============  ==========================================================================

The rendered path must stay inside the output folder (no absolute path, no ``..``).  A
template without ``{stem}``/``{role}`` is refused when the mode writes more than one output,
and two inputs rendering to the same output path are reported rather than overwriting each
other.
"""
from __future__ import annotations

import string
from pathlib import PurePosixPath

from .errors import CIError

DEFAULT_TEMPLATE = "{rel_dir}/{name}/{stem}.{ext}"     # batch
SEPARATE_TEMPLATE = "{model}/{track}/{stem}.{ext}"    # separate, Separator.separate_files
FIELDS = ("rel_dir", "name", "track", "input_ext", "stem", "role", "ext", "model", "mode")


def stem_name(role: str, mode: str) -> str:
    """The file-name stem of a role: MusicMode's background is ``other``."""
    return "other" if role == "background" and mode == "MusicMode" else role


def check_template(template: str, roles: tuple[str, ...] | None = None) -> str:
    """Raise ``CIError(InvalidArgument)`` for an unusable template; return it."""
    if not isinstance(template, str) or not template.strip():
        raise CIError("InvalidArgument", "the output name template is empty")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise CIError("InvalidArgument", f"output name template {template!r}: {e}") from None
    if template.strip().startswith(("/", "\\")):
        raise CIError("InvalidArgument", f"output name template {template!r} must be a relative path "
                      "(it is placed under the output folder)")
    names = set()
    for _lit, field, spec, conv in parsed:
        if field is None:
            continue
        if field not in FIELDS or spec or conv:
            raise CIError("InvalidArgument",
                          f"output name template {template!r}: unknown placeholder {{{field}}}; "
                          f"allowed: {', '.join('{' + f + '}' for f in FIELDS)}")
        names.add(field)
    if roles is not None and len(roles) > 1 and not names & {"stem", "role"}:
        raise CIError("InvalidArgument",
                      f"output name template {template!r} has no {{stem}}: the {len(roles)} outputs "
                      f"({', '.join(roles)}) would overwrite each other")
    # static problems ('..', nothing left) are usage errors, not per-input failures
    render(template, rel_dir="d", name="n", input_ext="wav", role=(roles or ("vocals",))[0], ext="m4a",
           model="m", mode="IsAudio")
    return template


def render(template: str, *, name: str, role: str, ext: str, model: str, mode: str, rel_dir: str = "",
           input_ext: str = "") -> str:
    """The output path (relative, POSIX) for one role of one input."""
    text = template.format(rel_dir=rel_dir, name=name, track=name, input_ext=input_ext,
                           stem=stem_name(role, mode), role=role, ext=ext, model=model, mode=mode)
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or not parts:
        raise CIError("InvalidArgument",
                      f"output name template {template!r} renders to {text!r}, which is not a "
                      "relative path inside the output folder")
    return str(PurePosixPath(*parts))
