"""Channel layouts: which channels of an input are separated together, and the stereo/mono downmix.

Pure functions over ffmpeg's channel names (``FL``, ``FR``, ``FC``, ``LFE``, ``SL`` …, as
``ffmpeg -layouts`` prints them), in the order the decoder delivers the channels.

**Groups.** A separation model hears one or two channels at a time, so an input with more
than two channels is cut into groups (:func:`channel_groups`): every left/right pair
(``FL+FR``, ``SL+SR``, ``BL+BR`` …) is separated as a stereo signal, every other channel
(``FC``, the dialogue in film and TV; ``BC`` …) on its own, and the low-frequency effects
channels (``LFE``, ``LFE2``) go to the background whole.  In every channel, the stems a job
writes still add up to that input channel.

**Downmix.** When a job asks for one or two channels from a source with more, each stem is
downmixed after separation (:func:`downmix_matrix`): the standard coefficients (front left
and right at 1, centre and surrounds at -3 dB into each side they belong to, LFE left out),
scaled so that no output sample can exceed full scale when no input sample does (the same
normalisation ffmpeg's own downmix applies).  Mono is the mean of that stereo downmix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ffmpeg's standard layouts (``ffmpeg -layouts``), name -> channels in decoder order.
STANDARD_LAYOUTS: dict[str, tuple[str, ...]] = {name: tuple(spec.split("+")) for name, spec in (
    ("mono", "FC"), ("stereo", "FL+FR"), ("2.1", "FL+FR+LFE"), ("3.0", "FL+FR+FC"),
    ("3.0(back)", "FL+FR+BC"), ("4.0", "FL+FR+FC+BC"), ("quad", "FL+FR+BL+BR"),
    ("quad(side)", "FL+FR+SL+SR"), ("3.1", "FL+FR+FC+LFE"), ("5.0", "FL+FR+FC+BL+BR"),
    ("5.0(side)", "FL+FR+FC+SL+SR"), ("4.1", "FL+FR+FC+LFE+BC"), ("5.1", "FL+FR+FC+LFE+BL+BR"),
    ("5.1(side)", "FL+FR+FC+LFE+SL+SR"), ("6.0", "FL+FR+FC+BC+SL+SR"),
    ("6.0(front)", "FL+FR+FLC+FRC+SL+SR"), ("3.1.2", "FL+FR+FC+LFE+TFL+TFR"),
    ("hexagonal", "FL+FR+FC+BL+BR+BC"), ("6.1", "FL+FR+FC+LFE+BC+SL+SR"),
    ("6.1(back)", "FL+FR+FC+LFE+BL+BR+BC"), ("6.1(front)", "FL+FR+LFE+FLC+FRC+SL+SR"),
    ("7.0", "FL+FR+FC+BL+BR+SL+SR"), ("7.0(front)", "FL+FR+FC+FLC+FRC+SL+SR"),
    ("7.1", "FL+FR+FC+LFE+BL+BR+SL+SR"), ("7.1(wide)", "FL+FR+FC+LFE+BL+BR+FLC+FRC"),
    ("7.1(wide-side)", "FL+FR+FC+LFE+FLC+FRC+SL+SR"), ("5.1.2", "FL+FR+FC+LFE+SL+SR+TFL+TFR"),
    ("5.1.2(back)", "FL+FR+FC+LFE+BL+BR+TFL+TFR"), ("octagonal", "FL+FR+FC+BL+BR+BC+SL+SR"),
    ("cube", "FL+FR+BL+BR+TFL+TFR+TBL+TBR"), ("5.1.4", "FL+FR+FC+LFE+SL+SR+TFL+TFR+TBL+TBR"),
    ("7.1.2", "FL+FR+FC+LFE+BL+BR+SL+SR+TFL+TFR"),
    ("7.1.4", "FL+FR+FC+LFE+BL+BR+SL+SR+TFL+TFR+TBL+TBR"),
    ("binaural", "BIL+BIR"), ("downmix", "DL+DR"),
)}

#: the layout ffmpeg assumes for a channel count when a file names none (av_channel_layout_default)
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}

#: left/right channel pairs, separated together as a stereo signal
PAIRS = (("FL", "FR"), ("SL", "SR"), ("BL", "BR"), ("FLC", "FRC"), ("WL", "WR"), ("SDL", "SDR"),
         ("TFL", "TFR"), ("TBL", "TBR"), ("TSL", "TSR"), ("BFL", "BFR"), ("SSL", "SSR"),
         ("TTL", "TTR"), ("DL", "DR"), ("BIL", "BIR"))
LFE = ("LFE", "LFE2")

_MINUS_3DB = float(np.sqrt(0.5))
_LEFT = {left for left, _ in PAIRS}
_RIGHT = {right for _, right in PAIRS}


def channel_names(layout: str | None, channels: int) -> tuple[str, ...]:
    """The channel names of a stream whose ffprobe ``channel_layout`` is ``layout``.

    A standard name (``5.1(side)``) or an explicit one (``FL+FR+LFE``) is read as such; an
    unknown or missing one takes ffmpeg's default layout for the channel count, and past 8
    channels the names ``C0``, ``C1`` … (each separated on its own)."""
    text = (layout or "").strip()
    names = STANDARD_LAYOUTS.get(text) or (tuple(text.split("+")) if "+" in text else None)
    if names is None or len(names) != channels:
        default = DEFAULT_LAYOUTS.get(channels)
        names = STANDARD_LAYOUTS[default] if default else tuple(f"C{i}" for i in range(channels))
    if channels == 1:
        return ("FC",)
    return names


def layout_name(names: tuple[str, ...]) -> str:
    """ffmpeg's name for these channels (a standard name, else ``FL+FR+…``)."""
    for name, chans in STANDARD_LAYOUTS.items():
        if chans == names:
            return name
    return "+".join(names)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels of the input separated together.

    ``channels``: the input channels this group writes (in input order); ``pick``: the input
    channel feeding each of the model's channels (a mono channel in a stereo model is fed to
    both, and the model's two outputs are averaged back to one); ``lfe``: not separated, the
    whole channel is background."""

    channels: tuple[int, ...]
    pick: tuple[int, ...] = ()
    lfe: bool = False

    @property
    def width(self) -> int:
        return len(self.channels)


def channel_groups(names: tuple[str, ...], model_channels: int = 2) -> tuple[ChannelGroup, ...]:
    """The groups an input with these channels is separated in (see the module doc)."""
    index = {n: i for i, n in enumerate(names)}
    paired: set[str] = set()
    if model_channels == 2:
        for left, right in PAIRS:
            if left in index and right in index:
                paired |= {left, right}
    groups: list[ChannelGroup] = []
    for i, name in enumerate(names):
        if name in LFE and len(names) > 2:
            groups.append(ChannelGroup((i,), lfe=True))
        elif name in paired:
            if name in _LEFT:
                right = next(r for left, r in PAIRS if left == name)
                groups.append(ChannelGroup((i, index[right]), (i, index[right])))
        else:
            groups.append(ChannelGroup((i,), (i,) * model_channels))
    return tuple(groups)


def downmix_matrix(names: tuple[str, ...], out_channels: int) -> np.ndarray:
    """``(out_channels, len(names))`` float32 coefficients of the stereo (or mono) downmix."""
    if out_channels not in (1, 2):
        raise ValueError(f"downmix to {out_channels} channels: only 1 or 2")
    m = np.zeros((2, len(names)), np.float64)
    for i, name in enumerate(names):
        if name in LFE:
            continue
        if name in ("FL",):
            m[0, i] = 1.0
        elif name in ("FR",):
            m[1, i] = 1.0
        elif name in _LEFT:
            m[0, i] = _MINUS_3DB
        elif name in _RIGHT:
            m[1, i] = _MINUS_3DB
        else:                                   # centre channels, and unnamed ones
            m[:, i] = _MINUS_3DB
    m /= max(1.0, float(np.abs(m).sum(axis=1).max()))
    if out_channels == 1:
        m = m.mean(axis=0, keepdims=True)
    return m.astype(np.float32)


__all__ = ["ChannelGroup", "DEFAULT_LAYOUTS", "STANDARD_LAYOUTS", "channel_groups", "channel_names",
           "downmix_matrix", "layout_name"]
