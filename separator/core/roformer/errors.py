"""The two ways a RoFormer model can be refused: its yaml, or its weights file."""
from __future__ import annotations


class RoformerConfigError(ValueError):
    """The ``.yaml`` cannot be used: unreadable, an unknown or unsupported option, a wrong type or
    value, or settings that contradict each other.  The message names the file and the option."""


class RoformerWeightsError(ValueError):
    """The ``.ckpt`` cannot be used: unreadable, not a state dict, or its keys/shapes do not
    match the model its yaml describes.  The message names the file and the first bad keys."""
