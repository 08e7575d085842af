"""RoFormer source separation models (BS-RoFormer, Mel-Band RoFormer) as the community ships
them: ZFTurbo's Music-Source-Separation-Training (MSST) checkpoints, a ``<name>.ckpt`` torch
state dict next to a ``<name>.yaml`` config.  Needs torch, numpy and PyYAML only.

Typical use::

    cfg = read_config("model.yaml")                  # RoformerConfigError when unusable
    model = load_weights(build_model(cfg), "model.ckpt")   # RoformerWeightsError
    sep = RoformerSeparator(model, cfg, device="cuda", precision="bf16")
    for out in sep.separate_stream(blocks):          # blocks: (frames, channels) float32
        ...                                          # out.stems: {stem: (frames, channels) float32},
                                                     # out.mixture: the input frames they came from

Units: ``samplerate`` in Hz; chunk sizes, steps and block lengths in frames (samples per
channel); nothing here works in seconds.
"""
from __future__ import annotations

from torch import nn

from .config import (ARCHITECTURES, BS_ROFORMER, MEL_BAND_ROFORMER, RoformerConfig,
                     parse_config, read_config)
from .errors import RoformerConfigError, RoformerWeightsError
from .load import load_weights, read_state_dict
from .model import BSRoformer, MelBandRoformer

__all__ = [
    "ARCHITECTURES", "BS_ROFORMER", "MEL_BAND_ROFORMER", "BSRoformer", "MelBandRoformer",
    "NormStats", "RoformerConfig", "RoformerConfigError", "RoformerSeparator",
    "RoformerWeightsError", "build_model", "load_weights", "parse_config", "read_config",
    "read_state_dict",
]


def build_model(cfg: RoformerConfig) -> nn.Module:
    """A randomly initialised net of the config's architecture and size, in eval mode (load
    weights with :func:`load_weights`)."""
    cls = BSRoformer if cfg.architecture == BS_ROFORMER else MelBandRoformer
    try:
        model = cls(**cfg.model_kwargs)
    except ValueError as e:  # the config checks should have caught it; keep the error typed
        raise RoformerConfigError(f"{cfg.source or 'the model config'}: {e}") from None
    return model.eval()


def __getattr__(name: str):
    # the streaming separator lives in .demix; imported on first use
    if name in ("RoformerSeparator", "NormStats"):
        from . import demix
        return getattr(demix, name)
    raise AttributeError(name)
