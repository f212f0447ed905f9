"""Process-wide sharing of loaded models and attributors, and the locks that guard them.

Every LangChain object of this package (the citation step, the callback handler, the document
filter, the local chat model) takes its model from :func:`attribot_rag.models.shared_model`
(one copy per model, device and dtype in the process, shared with the LlamaIndex integration),
and an :class:`~attribot_rag.Attributor` is built once per settings, however many chains,
threads or event loops use it. Work on one model is serialised by its process-wide lock
(:func:`attribot_rag.models.model_lock`, which the LlamaIndex integration takes too): CPU
inference already uses every core, and one-at-a-time keeps GPU memory bounded.
"""

from __future__ import annotations

import threading
from typing import Any

from attribot_rag import DEFAULT_MODEL, Attributor, ConfigError, PromptTemplate
from attribot_rag.attributor import resolve_strategy
from attribot_rag.models import clear_model_cache, model_lock, on_clear_model_cache, shared_model

__all__ = ["ModelLike", "clear_cache", "model_lock", "shared_attributor", "shared_model"]

ModelLike = Any  # a short name / local path (str), a LoadedModel, or a (model, tokenizer) pair

_GUARD = threading.Lock()  # guards the dictionary below (never held while computing)
_ATTRIBUTORS: dict[tuple, tuple[Attributor, tuple]] = {}


def _strategy_key(strategy: Any, has_proxy: bool) -> Any:
    """``"auto"`` and the preset it stands for share one attributor (bad values: the Attributor says why)."""
    try:
        return resolve_strategy(strategy, has_proxy)
    except (ConfigError, TypeError):
        return strategy


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


def _forget_attributors() -> None:
    with _GUARD:
        _ATTRIBUTORS.clear()


on_clear_model_cache(_forget_attributors)  # the cached attributors hold models: drop them with the models


def clear_cache() -> None:
    """Forget every shared model and attributor (:func:`attribot_rag.models.clear_model_cache`)."""
    clear_model_cache()
