"""Process-wide sharing of loaded models and attributors, and the locks that guard them.

Every LangChain object of this package (the citation step, the callback handler, the document
filter, the local chat model) asks here for its model. A model is loaded once per
``(name, device, dtype)`` as it would load (``dtype="fp32"`` and ``torch.float32`` are one key,
so are ``device=None`` and the default device), and an :class:`~attribot_rag.Attributor` is
built once per settings, however many chains, threads or event loops use it. Work on one model
is serialised by one lock: CPU inference already uses every core, and one-at-a-time keeps GPU
memory bounded and keeps Hugging Face fast tokenizers (which are not re-entrant) out of races.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

from attribot_rag import DEFAULT_MODEL, Attributor, ConfigError, LoadedModel, ModelError, PromptTemplate, load_model
from attribot_rag.attributor import resolve_strategy
from attribot_rag.models import _as_dtype, default_device, default_dtype

ModelLike = Any  # a short name / local path (str), a LoadedModel, or a (model, tokenizer) pair

_GUARD = threading.Lock()  # guards the dictionaries below (never held while computing)
_LOADED: dict[tuple, LoadedModel] = {}
_LOADING: dict[tuple, threading.Lock] = {}
_ATTRIBUTORS: dict[tuple, tuple[Attributor, tuple]] = {}
_MODEL_LOCKS: dict[int, tuple[Any, threading.RLock]] = {}


@functools.cache
def _default_dtype_name(device: str) -> str:
    return _dtype_name(default_dtype(device))  # reads /proc/cpuinfo: once per device


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _device_key(device: str | None) -> str:
    """The device ``load_model`` would use: ``None`` is the default device, ``"cuda"`` the current GPU."""
    import torch

    name = device or default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        return str(name)  # load_model reports the bad device
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def _dtype_key(dtype: Any, device: str) -> str:
    """The dtype ``load_model`` would use, by name: ``"fp32"``, ``torch.float32`` and ``None`` on a
    CPU without bf16 all key as ``"float32"``, so the same weights are not loaded twice."""
    try:
        resolved = _as_dtype(dtype)
    except (ModelError, TypeError):
        return repr(dtype)  # load_model reports the bad dtype
    return _default_dtype_name(device) if resolved is None else _dtype_name(resolved)


def _model_key(model: ModelLike, device: str | None, dtype: Any) -> tuple:
    """A hashable key; objects are keyed by identity (and kept alive by the cache entry).

    A named model is keyed by the device and dtype it would load with, not by how they were
    spelled (``device=None`` vs ``"cpu"``, ``dtype="fp32"`` vs ``torch.float32``).
    """
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, str):
        dev = _device_key(device)
        return ("name", model, dev, _dtype_key(dtype, dev))
    if isinstance(model, LoadedModel):
        return ("loaded", id(model))
    if isinstance(model, tuple) and len(model) == 2:
        return ("pair", id(model[0]), id(model[1]))
    return ("object", id(model))


def _strategy_key(strategy: Any, has_proxy: bool) -> Any:
    """``"auto"`` and the preset it stands for share one attributor (bad values: the Attributor says why)."""
    try:
        return resolve_strategy(strategy, has_proxy)
    except (ConfigError, TypeError):
        return strategy


def shared_model(model: ModelLike = DEFAULT_MODEL, *, device: str | None = None, dtype: Any = None) -> LoadedModel:
    """The :class:`LoadedModel` for ``model``, loaded on first use and shared afterwards.

    Concurrent first calls for the same model load it once (the others wait).
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, tuple) and len(model) == 2:
        m, tok = model
        key = _model_key(model, device, dtype)
        with _GUARD:
            if key not in _LOADED:
                name = getattr(getattr(m, "config", None), "_name_or_path", None) or type(m).__name__
                _LOADED[key] = LoadedModel(name=name, model=m, tokenizer=tok)
            return _LOADED[key]
    key = _model_key(model, device, dtype)
    with _GUARD:
        if key in _LOADED:
            return _LOADED[key]
        loading = _LOADING.setdefault(key, threading.Lock())
    with loading:  # one loader per key; later arrivals find it in the cache
        with _GUARD:
            if key in _LOADED:
                return _LOADED[key]
        loaded = load_model(model, device=device, dtype=dtype)
        with _GUARD:
            _LOADED[key] = loaded
            _LOADING.pop(key, None)
        return loaded


def shared_attributor(
    model: ModelLike = DEFAULT_MODEL,
    proxy: ModelLike | None = None,
    *,
    strategy: Any = "auto",
    device: str | None = None,
    dtype: Any = None,
    template: PromptTemplate | None = None,
    **kwargs: Any,
) -> Attributor:
    """An :class:`Attributor` over shared models, built once per distinct settings.

    ``kwargs`` go to :class:`Attributor` (e.g. ``max_batch_size``); their values must be hashable.
    """
    target = shared_model(model, device=device, dtype=dtype)
    prox = shared_model(proxy, device=device, dtype=dtype) if proxy is not None else None
    key = (id(target), id(prox), _strategy_key(strategy, prox is not None), template or PromptTemplate(),
           tuple(sorted(kwargs.items())))
    with _GUARD:
        hit = _ATTRIBUTORS.get(key)
        if hit is not None:
            return hit[0]
    att = Attributor(target, prox, strategy=strategy, template=template, **kwargs)
    with _GUARD:
        # keep the models referenced so their ids in the key stay theirs
        return _ATTRIBUTORS.setdefault(key, (att, (target, prox)))[0]


def model_lock(loaded: LoadedModel) -> threading.RLock:
    """The lock serialising work on ``loaded`` (one per model object, process wide)."""
    with _GUARD:
        entry = _MODEL_LOCKS.get(id(loaded))
        if entry is None or entry[0] is not loaded:
            entry = (loaded, threading.RLock())
            _MODEL_LOCKS[id(loaded)] = entry
        return entry[1]


@contextlib.contextmanager
def attributor_lock(attributor: Attributor) -> Iterator[None]:
    """Hold the locks of every model ``attributor`` runs (in a fixed order: no deadlock)."""
    models = [attributor.target.loaded]
    if attributor.proxy is not None and attributor.proxy.loaded is not attributor.target.loaded:
        models.append(attributor.proxy.loaded)
    locks = [model_lock(m) for m in sorted(models, key=id)]
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


def clear_cache() -> None:
    """Forget every shared model and attributor (tests; freeing memory)."""
    with _GUARD:
        _LOADED.clear()
        _ATTRIBUTORS.clear()
        _MODEL_LOCKS.clear()
