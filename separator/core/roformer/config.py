"""Reading MSST ``.yaml`` model configs as the community ships them.

The yamls are written by PyYAML's default dumper, so they carry ``!!python/tuple`` tags (for
``freqs_per_bands``, ``multi_stft_resolutions_window_sizes``, ...).  They are read with a
``yaml.SafeLoader`` subclass that knows that one tag (a YAML sequence -> a Python tuple) and
nothing else: any other Python tag is refused, no object is ever constructed.

Sections and what is used:

``audio``
    ``chunk_size`` (samples per model call, unless ``inference.chunk_size`` is given),
    ``sample_rate`` (Hz, default 44100 as in MSST), ``num_channels`` (must agree with
    ``model.stereo`` when given).  ``n_fft``, ``hop_length``, ``dim_f``, ``dim_t`` and
    ``min_mean_abs`` are accepted and ignored (MSST's RoFormers ignore them too; the STFT is
    ``model.stft_*``).
``model``
    the net's constructor arguments (see ``_COMMON``, ``_BS`` and ``_MEL`` below); training-only
    and kernel-choice options are accepted and dropped; an option this module does not know is
    an error naming it; a known option that changes the weights in a way this package does not
    implement (``use_pope``, ``use_shared_bias``, a ``stft_window_fn``) is an error when set.
``training``
    ``instruments`` (stem names) and ``target_instrument``: when ``target_instrument`` is set
    (truthy), the model outputs that one stem, else one stem per instrument, in order (MSST's
    ``prefer_target_instrument``).  ``model_type`` picks the architecture when given.  All other
    keys are training settings and are accepted unread.
``inference``
    ``batch_size`` (chunks per model call, default 1), ``num_overlap`` (chunks overlap so that
    the hop between chunk starts is ``chunk_size // num_overlap``; default 2), ``chunk_size``
    (overrides ``audio.chunk_size``), ``normalize`` (default false), ``dim_t`` (ignored).

Other top-level sections MSST's training reads (``augmentations``, ``loss_multistft``,
``optimizer``, ``lora``, ...) are accepted unread; an unknown section is an error.

Architecture: ``training.model_type`` when it names one, else BS-RoFormer when ``model`` has
``freqs_per_bands`` and Mel-Band RoFormer when it has ``num_bands``; ``read_config(...,
architecture=...)`` overrides all of that.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from .errors import RoformerConfigError
from .model import DEFAULT_FREQS_PER_BANDS

BS_ROFORMER = "bs_roformer"
MEL_BAND_ROFORMER = "mel_band_roformer"
ARCHITECTURES = (BS_ROFORMER, MEL_BAND_ROFORMER)

_TUPLE_TAG = "tag:yaml.org,2002:python/tuple"


class _MsstYamlLoader(yaml.SafeLoader):
    """SafeLoader plus ``!!python/tuple`` (a sequence, built as a tuple)."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!!python/tuple must tag a sequence", node.start_mark)
    return tuple(loader.construct_sequence(node, deep=True))


_MsstYamlLoader.add_constructor(_TUPLE_TAG, _construct_tuple)


# model options: name -> (kind, default).  Kinds: int, pos (int >= 1), nat (int >= 0), bool,
# bands (tuple of pos), num (a number).  Defaults are MSST's, except zero_dc (see model.py).
_COMMON: dict[str, tuple[str, Any]] = {
    "dim": ("pos", None),
    "depth": ("pos", None),
    "stereo": ("bool", False),
    "num_stems": ("pos", 1),
    "time_transformer_depth": ("nat", 2),
    "freq_transformer_depth": ("nat", 2),
    "linear_transformer_depth": ("nat", 0),
    "dim_head": ("pos", 64),
    "heads": ("pos", 8),
    "stft_n_fft": ("pos", 2048),
    "stft_hop_length": ("pos", 512),
    "stft_win_length": ("pos", 2048),
    "stft_normalized": ("bool", False),
    "mlp_expansion_factor": ("pos", 4),
    "skip_connection": ("bool", False),
    "zero_dc": ("bool", False),
}
_BS = {"freqs_per_bands": ("bands", DEFAULT_FREQS_PER_BANDS), "mask_estimator_depth": ("pos", 2)}
_MEL = {"num_bands": ("pos", 60), "sample_rate": ("pos", 44100), "mask_estimator_depth": ("nat", 1)}

# accepted and dropped: training-time settings, or a kernel choice for the same maths
_IGNORED_COMMON = frozenset({
    "attn_dropout", "ff_dropout", "flash_attn", "dim_freqs_in", "use_torch_checkpoint",
    "sage_attention", "multi_stft_resolution_loss_weight", "multi_stft_resolutions_window_sizes",
    "multi_stft_hop_size", "multi_stft_normalized", "multi_stft_window_fn"})
_IGNORED = {BS_ROFORMER: _IGNORED_COMMON,
            MEL_BAND_ROFORMER: _IGNORED_COMMON | {"match_input_audio_length"}}
# known, but they change the weights in ways not implemented here: refused unless off/null
_UNSUPPORTED = {
    "use_pope": "PoPE position embeddings (MSST's use_pope) are not implemented; only rotary ones",
    "use_shared_bias": "shared attention biases belong to the BS-RoFormer-SW variant, whose "
                       "weights layout differs (learned rotary tables); it is not supported",
    "stft_window_fn": "only the default Hann STFT window is supported",
}

_AUDIO_USED = {"chunk_size", "sample_rate", "num_channels"}
_AUDIO_IGNORED = {"n_fft", "hop_length", "dim_f", "dim_t", "min_mean_abs"}
_INFERENCE_KEYS = {"batch_size", "num_overlap", "chunk_size", "normalize", "dim_t"}
_SECTIONS_USED = {"audio", "model", "training", "inference"}
_SECTIONS_IGNORED = {"augmentations", "loss_multistft", "optimizer", "lora", "metrics"}


@dataclass(frozen=True)
class RoformerConfig:
    """A checked RoFormer config.

    ``model_kwargs`` are the keyword arguments of :class:`.model.BSRoformer` /
    :class:`.model.MelBandRoformer`, every one filled in (MSST's defaults).  ``samplerate`` is
    in Hz; ``audio_channels`` is 2 for a stereo model, 1 for mono; ``stems`` are the output stem
    names in model order; ``chunk_size`` is in samples (frames) per model call;
    ``num_overlap``, ``batch_size`` and ``normalize`` are the yaml's inference settings;
    ``use_amp`` is ``training.use_amp`` (MSST runs CUDA inference in float16 autocast when it
    is true; informative only); ``raw`` is the whole yaml as read.
    """

    architecture: str
    model_kwargs: Mapping[str, Any]
    samplerate: int
    audio_channels: int
    stems: tuple[str, ...]
    chunk_size: int
    num_overlap: int
    batch_size: int
    normalize: bool = False
    use_amp: bool = True
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    source: str | None = None

    @property
    def step(self) -> int:
        """Samples between the starts of consecutive chunks (``chunk_size // num_overlap``)."""
        return self.chunk_size // self.num_overlap

    @property
    def border(self) -> int:
        """Samples of reflect padding MSST adds at each end of a long enough input."""
        return self.chunk_size - self.step

    @property
    def fade_size(self) -> int:
        """Samples of linear fade at each end of a chunk's overlap-add window."""
        return self.chunk_size // 10


def read_config(path: str | os.PathLike, architecture: str | None = None) -> RoformerConfig:
    """Read and check an MSST ``.yaml``; ``architecture`` (``'bs_roformer'`` or
    ``'mel_band_roformer'``) overrides detection.  Raises :class:`RoformerConfigError`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RoformerConfigError(f"cannot read the model config {path}: {e}") from None
    return parse_config(text, architecture=architecture, source=path)


def load_yaml(text: str, source: str | None = None) -> Any:
    """The yaml document in ``text``, read safely (``!!python/tuple`` -> tuple, nothing else)."""
    where = source or "<config>"
    try:
        return yaml.load(text, Loader=_MsstYamlLoader)
    except yaml.YAMLError as e:
        raise RoformerConfigError(
            f"{where} is not a model config this package can read (only plain YAML and "
            f"!!python/tuple tags are allowed): {e}") from None


def parse_config(data: str | Mapping[str, Any], architecture: str | None = None,
                 source: str | None = None) -> RoformerConfig:
    """Like :func:`read_config`, from the yaml text or its already-loaded mapping."""
    where = source or "the model config"
    raw = load_yaml(data, source) if isinstance(data, str) else data

    def fail(msg: str) -> RoformerConfigError:
        return RoformerConfigError(f"{where}: {msg}")

    if not isinstance(raw, Mapping):
        raise fail("expected a mapping of sections (audio, model, training, inference)")
    for name in raw:
        if name not in _SECTIONS_USED and name not in _SECTIONS_IGNORED:
            raise fail(f"unknown section {name!r} (known: "
                       f"{', '.join(sorted(_SECTIONS_USED | _SECTIONS_IGNORED))})")

    def section(name: str, required: bool) -> Mapping[str, Any]:
        sec = raw.get(name)
        if sec is None:
            if required:
                raise fail(f"the {name!r} section is missing")
            return {}
        if not isinstance(sec, Mapping):
            raise fail(f"section {name!r} must be a mapping, got {type(sec).__name__}")
        return sec

    audio = section("audio", True)
    model = section("model", True)
    training = section("training", True)
    inference = section("inference", False)

    for key in audio:
        if key not in _AUDIO_USED and key not in _AUDIO_IGNORED:
            raise fail(f"unknown option audio.{key}")
    for key in inference:
        if key not in _INFERENCE_KEYS:
            raise fail(f"unknown option inference.{key}")

    arch = _architecture(model, training, architecture, fail)
    kwargs = _model_kwargs(model, arch, fail)

    # stems, as MSST's prefer_target_instrument
    instruments = training.get("instruments")
    target = training.get("target_instrument")
    if target:
        if not isinstance(target, str):
            raise fail(f"training.target_instrument must be a stem name, got {target!r}")
        stems: tuple[str, ...] = (target,)
    else:
        if (not isinstance(instruments, (list, tuple)) or not instruments
                or not all(isinstance(s, str) and s for s in instruments)):
            raise fail("training.instruments must be a non-empty list of stem names "
                       f"(got {instruments!r})")
        stems = tuple(instruments)
    if len(set(stems)) != len(stems):
        raise fail(f"training.instruments has duplicate names: {list(stems)}")
    if kwargs["num_stems"] != len(stems):
        origin = ("training.target_instrument is set, so the model must output that one stem"
                  if target else f"training.instruments lists {len(stems)}")
        raise fail(f"model.num_stems is {kwargs['num_stems']} but {origin}")

    audio_channels = 2 if kwargs["stereo"] else 1
    if "num_channels" in audio and audio["num_channels"] != audio_channels:
        raise fail(f"audio.num_channels is {audio['num_channels']!r} but model.stereo is "
                   f"{kwargs['stereo']} ({audio_channels} channel(s))")
    samplerate = _int(audio.get("sample_rate", 44100), "audio.sample_rate", 1, fail)

    if "chunk_size" in inference:
        chunk_size = _int(inference["chunk_size"], "inference.chunk_size", 1, fail)
    elif "chunk_size" in audio:
        chunk_size = _int(audio["chunk_size"], "audio.chunk_size", 1, fail)
    else:
        raise fail("audio.chunk_size is missing")
    if chunk_size < 10 or chunk_size <= kwargs["stft_n_fft"] // 2:
        raise fail(f"chunk_size {chunk_size} is too short: it must be at least 10 samples and "
                   f"longer than stft_n_fft // 2 = {kwargs['stft_n_fft'] // 2}")
    num_overlap = _int(inference.get("num_overlap", 2), "inference.num_overlap", 1, fail)
    if chunk_size // num_overlap < 1:
        raise fail(f"inference.num_overlap {num_overlap} is larger than chunk_size {chunk_size}")
    batch_size = _int(inference.get("batch_size", 1), "inference.batch_size", 1, fail)
    normalize = _bool(inference.get("normalize", False), "inference.normalize", fail)
    use_amp = _bool(training.get("use_amp", True), "training.use_amp", fail)

    return RoformerConfig(
        architecture=arch, model_kwargs=MappingProxyType(kwargs), samplerate=samplerate,
        audio_channels=audio_channels, stems=stems, chunk_size=chunk_size,
        num_overlap=num_overlap, batch_size=batch_size, normalize=normalize, use_amp=use_amp,
        raw=raw, source=source)


def _architecture(model: Mapping, training: Mapping, override: str | None, fail) -> str:
    if override is not None:
        if override not in ARCHITECTURES:
            raise RoformerConfigError(f"architecture must be one of {ARCHITECTURES}, got {override!r}")
        return override
    model_type = training.get("model_type")
    if model_type is not None:
        if model_type not in ARCHITECTURES:
            raise fail(f"training.model_type {model_type!r} is not a RoFormer this package runs "
                       f"(supported: {', '.join(ARCHITECTURES)})")
        return model_type
    has_bs, has_mel = "freqs_per_bands" in model, "num_bands" in model
    if has_bs and not has_mel:
        return BS_ROFORMER
    if has_mel and not has_bs:
        return MEL_BAND_ROFORMER
    raise fail("cannot tell BS-RoFormer from Mel-Band RoFormer: model must have exactly one of "
               "freqs_per_bands (BS-RoFormer) and num_bands (Mel-Band RoFormer); pass "
               "architecture= to choose")


def _model_kwargs(model: Mapping, arch: str, fail) -> dict[str, Any]:
    spec = dict(_COMMON)
    spec.update(_BS if arch == BS_ROFORMER else _MEL)
    kwargs: dict[str, Any] = {}
    for key, value in model.items():
        if key in spec:
            kwargs[key] = value
        elif key in _IGNORED[arch]:
            continue
        elif key in _UNSUPPORTED:
            if value in (None, False, 0):
                continue
            raise fail(f"model.{key}: {_UNSUPPORTED[key]}")
        else:
            other = MEL_BAND_ROFORMER if arch == BS_ROFORMER else BS_ROFORMER
            hint = (f" (an option of {other}, but this config is a {arch})"
                    if key in (_MEL if arch == BS_ROFORMER else _BS) else "")
            raise fail(f"unknown option model.{key}{hint}")
    out: dict[str, Any] = {}
    for key, (kind, default) in spec.items():
        if key not in kwargs:
            if default is None:
                raise fail(f"model.{key} is missing")
            out[key] = default
            continue
        value, name = kwargs[key], f"model.{key}"
        if kind == "bool":
            out[key] = _bool(value, name, fail)
        elif kind == "bands":
            if (not isinstance(value, (list, tuple)) or not value
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
                raise fail(f"{name} must be a sequence of positive band widths, got {value!r}")
            out[key] = tuple(value)
        else:
            out[key] = _int(value, name, 1 if kind == "pos" else 0, fail)

    if out["dim_head"] % 2:
        raise fail(f"model.dim_head must be even (rotary embeddings rotate pairs), got {out['dim_head']}")
    if out["stft_win_length"] > out["stft_n_fft"]:
        raise fail(f"model.stft_win_length {out['stft_win_length']} is longer than "
                   f"model.stft_n_fft {out['stft_n_fft']}")
    n_bins = out["stft_n_fft"] // 2 + 1
    if arch == BS_ROFORMER:
        bands = out["freqs_per_bands"]
        if len(bands) < 2 or sum(bands) != n_bins:
            raise fail(f"model.freqs_per_bands must split the {n_bins} bins of a "
                       f"{out['stft_n_fft']}-point STFT into at least 2 bands; it has "
                       f"{len(bands)} bands covering {sum(bands)} bins")
    else:
        from .mel import mel_band_mask
        if not mel_band_mask(out["sample_rate"], out["stft_n_fft"], out["num_bands"]).any(axis=0).all():
            raise fail(f"model.num_bands {out['num_bands']} mel bands at sample_rate "
                       f"{out['sample_rate']} leave some of the {n_bins} STFT bins uncovered")
    return out


def _int(value: Any, name: str, minimum: int, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise fail(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise fail(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(value: Any, name: str, fail) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise fail(f"{name} must be true or false, got {value!r}")
