"""Process-wide sharing of loaded models and attributors: thin wrappers over attribot-rag's own.

Every LangChain object of this package (the citation step, the callback handler, the document
filter, the local chat model) takes its model from :func:`attribot_rag.shared_model` (one copy
per model, device and dtype in the process, shared with the LlamaIndex integration) and its
attributor from :func:`attribot_rag.shared_attributor` (one per distinct
:class:`~attribot_rag.AttributorConfig`), however many chains, threads or event loops use it.
Work on one model is serialised by its process-wide lock (:func:`attribot_rag.model_lock`), which
``Attributor.attribute`` and attribot-rag's generation take themselves.
"""

from __future__ import annotations

from typing import Any

from attribot_rag import (
    DEFAULT_MODEL,
    Attributor,
    AttributorConfig,
    PromptTemplate,
    clear_model_cache,
    model_lock,
    shared_model,
)
from attribot_rag import shared_attributor as core_shared_attributor

__all__ = ["ModelLike", "clear_cache", "model_lock", "shared_attributor", "shared_model"]

ModelLike = Any  # a short name / local path (str), a LoadedModel, or a (model, tokenizer) pair


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
    """An :class:`Attributor` over shared models, built once per distinct settings
    (:func:`attribot_rag.shared_attributor` of the :class:`~attribot_rag.AttributorConfig` they make).

    ``kwargs`` are further :class:`Attributor` options (e.g. ``max_batch_size``).
    """
    return core_shared_attributor(AttributorConfig(model, proxy, strategy=strategy, template=template,
                                                   device=device, dtype=dtype, **kwargs))


def clear_cache() -> None:
    """Forget every shared model and attributor (:func:`attribot_rag.clear_model_cache`)."""
    clear_model_cache()
