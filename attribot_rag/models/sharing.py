"""Process-wide sharing of loaded models: one copy per model setting (:func:`shared_model`), one lock per model
object (:func:`model_lock`), and :func:`clear_model_cache` with its hooks."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ModelError
from . import loading as _loading
from .loading import LoadedModel, default_device, default_dtype, dtype_name, resolve_dtype
from .registry import DEFAULT_MODEL

_SHARED_GUARD = threading.Lock()  # guards the tables below; never held while loading or computing
_SHARED: dict[tuple, LoadedModel] = {}
_SHARED_LOADING: dict[tuple, threading.Lock] = {}
_SHARED_GENERATION = [0]  # bumped by clear_model_cache: a load that straddles a clear is not cached
_MODEL_LOCKS: dict[int, tuple[LoadedModel, threading.RLock]] = {}
_ON_CLEAR: list[Callable[[], None]] = []


def _default_dtype_name(device: str) -> str:
    return dtype_name(default_dtype(device))  # reads /proc/cpuinfo: once per device


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
    """The dtype ``load_model`` would use, by name (``"fp32"``, ``torch.float32`` and ``None`` on a CPU
    without bf16 are all ``"float32"``), so the same weights are not loaded twice."""
    try:
        resolved = resolve_dtype(dtype)
    except (ModelError, TypeError):
        return repr(dtype)  # load_model reports the bad dtype
    return _default_dtype_name(device) if resolved is None else dtype_name(resolved)


def model_key(model: Any, device: str | None = None, dtype: Any = None) -> tuple:
    """A hashable key for a model setting: a named model keys by what it would load as (``"fp32"`` and
    ``torch.float32`` alike, ``device=None`` as the default device), a :class:`LoadedModel` or a
    ``(model, tokenizer)`` pair by identity (whoever keeps the key must keep the object alive)."""
    if isinstance(model, LoadedModel):
        return ("loaded", id(model))
    if isinstance(model, os.PathLike):  # a Path is always a local folder or file, never a registry name
        dev = _device_key(device)
        return ("path", os.path.abspath(os.fspath(model)), dev, _dtype_key(dtype, dev))
    if isinstance(model, str):
        dev = _device_key(device)
        return ("name", model, dev, _dtype_key(dtype, dev))
    return ("pair", id(model[0]), id(model[1]))


def shared_model(model: Any = DEFAULT_MODEL, *, device: str | None = None, dtype: Any = None) -> LoadedModel:
    """The process-wide :class:`LoadedModel` for ``model``: loaded on first use, shared afterwards.

    ``model`` is anything :func:`load_model` takes, a :class:`LoadedModel` (returned as is), or a
    ``(model, tokenizer)`` pair (wrapped once). A named model is one copy per device and dtype it
    would load with, however they are spelled (``device=None`` vs ``"cpu"``, ``"fp32"`` vs
    ``torch.float32``), so every integration object, thread and event loop asking for it holds one
    set of weights. Concurrent first calls load it once; the others wait.
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, tuple):
        if len(model) != 2:
            raise ModelError(f"a model given as a tuple must be (model, tokenizer); got {len(model)} items")
        key = model_key(model, device, dtype)
        with _SHARED_GUARD:
            if key not in _SHARED:
                m, tok = model
                name = getattr(getattr(m, "config", None), "_name_or_path", None) or type(m).__name__
                _SHARED[key] = LoadedModel(name=name, model=m, tokenizer=tok)
            return _SHARED[key]
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(f"cannot load a model from {type(model).__name__}: pass an embedded name, a local "
                         "path, a Hugging Face id, a LoadedModel or a (model, tokenizer) pair")
    key = model_key(model, device, dtype)
    with _SHARED_GUARD:
        if key in _SHARED:
            return _SHARED[key]
        loading = _SHARED_LOADING.setdefault(key, threading.Lock())
        generation = _SHARED_GENERATION[0]
    with loading:  # one loader per key; later arrivals find it in the cache
        with _SHARED_GUARD:
            if key in _SHARED:
                return _SHARED[key]
        loaded = _loading.load_model(model, device=device, dtype=dtype)  # looked up at call time: patchable there
        with _SHARED_GUARD:
            _SHARED_LOADING.pop(key, None)
            if _SHARED_GENERATION[0] == generation:  # not cleared while it loaded
                _SHARED[key] = loaded
        return loaded


def model_lock(loaded: LoadedModel) -> threading.RLock:
    """The process-wide lock that serialises work on ``loaded`` (one per model object).

    Every integration holds it while it generates with or attributes on a model, so a process
    mixing them (a LangChain chain and a LlamaIndex engine on one shared model) runs one model
    call at a time: CPU inference already uses every core, and one-at-a-time bounds GPU memory.
    """
    with _SHARED_GUARD:
        entry = _MODEL_LOCKS.get(id(loaded))
        if entry is None or entry[0] is not loaded:  # an id can be reused once its object is gone
            entry = (loaded, threading.RLock())
            _MODEL_LOCKS[id(loaded)] = entry
        return entry[1]


@contextlib.contextmanager
def models_locked(*models: LoadedModel | None) -> Iterator[None]:
    """Hold :func:`model_lock` of each distinct model, always in the same order (so no deadlock)."""
    distinct = {id(m): m for m in models if m is not None}
    with contextlib.ExitStack() as stack:
        for key in sorted(distinct):
            stack.enter_context(model_lock(distinct[key]))
        yield


def on_clear_model_cache(callback: Callable[..., None]) -> None:
    """Run ``callback(*models)`` on every :func:`clear_model_cache` (with the models it was given: none
    means all), so what holds those models is dropped too (the core's shared attributors do this)."""
    with _SHARED_GUARD:
        _ON_CLEAR.append(callback)


def clear_model_cache(*models: LoadedModel) -> None:
    """Forget every shared model, its lock and every shared attributor on it (each model is freed once
    nothing else holds it); a load running meanwhile is not cached. With ``models``: forget only those."""
    with _SHARED_GUARD:
        if models:
            gone = {id(m) for m in models}
            for key in [k for k, m in _SHARED.items() if id(m) in gone]:
                del _SHARED[key]
            for key in gone & set(_MODEL_LOCKS):
                del _MODEL_LOCKS[key]
        else:
            _SHARED.clear()
            _MODEL_LOCKS.clear()
            _SHARED_GENERATION[0] += 1
        callbacks = list(_ON_CLEAR)
    for callback in callbacks:
        callback(*models)
