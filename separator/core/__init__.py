"""The separation core: one package per model family, over the machinery they share.

Families (each: ``specs``, ``installed``, ``load``; listed in :data:`.registry.FAMILIES`):
:mod:`.spleeter` (the bundled model), :mod:`.demucs`; :mod:`.roformer` is not registered yet.

Shared: :mod:`.base` (ModelSpec, LoadedModel, the Separated block), :mod:`.registry` (families,
the preference table, the loaded-model cache), :mod:`.blocks`, :mod:`.stft_stream`,
:mod:`.oom`, :mod:`.precision`, :mod:`.transfer`, :mod:`.tensor_cache`, :mod:`.packed_conv`,
:mod:`.weights`.
"""
