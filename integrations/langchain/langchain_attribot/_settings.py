"""Which local model scores answers: the settings every component of the package shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attribot_rag import DEFAULT_MODEL, Attributor, PromptTemplate

from ._models import ModelLike, shared_attributor


@dataclass(frozen=True)
class ScorerSettings:
    """How to build (or which) :class:`~attribot_rag.Attributor` to use; resolved lazily.

    Args:
        model: the local model that scores the answer: an embedded short name (default
            ``"smollm2-135m"``), a local folder, a ``LoadedModel`` or a ``(model, tokenizer)``
            pair. It need not be the model that wrote the answer: an answer from a chat model
            behind an API is scored as text by this one.
        proxy: an optional smaller model for the proxy strategies (same forms).
        strategy: an attribot-rag strategy preset or ``Strategy``.
        device / dtype: where and how to load named models (default: CUDA + bf16 if present).
        template: the prompt template the scorer renders (``PromptTemplate``).
        attributor: use this ``Attributor`` instead of building one (the fields above are ignored).
        attributor_kwargs: further ``Attributor`` arguments (hashable values), e.g. ``max_batch_size``.
    """

    model: ModelLike = DEFAULT_MODEL
    proxy: ModelLike | None = None
    strategy: Any = "auto"
    device: str | None = None
    dtype: Any = None
    template: PromptTemplate | None = None
    attributor: Attributor | None = None
    attributor_kwargs: dict[str, Any] = field(default_factory=dict)

    def resolve(self) -> Attributor:
        """The attributor: given, or shared across every component with equal settings.

        The first call loads the model (seconds); call it from a worker thread in async code.
        """
        if self.attributor is not None:
            return self.attributor
        return shared_attributor(
            self.model, self.proxy, strategy=self.strategy, device=self.device, dtype=self.dtype,
            template=self.template, **self.attributor_kwargs,
        )

    def describe(self) -> str:
        """A short label for reprs."""
        if self.attributor is not None:
            return f"attributor={self.attributor.target.name!r}"
        name = self.model if isinstance(self.model, str) else type(self.model).__name__
        return f"model={name!r}, strategy={self.strategy!r}"
