"""Which local model scores answers: the settings every component of the package shares.

The settings are checked when a component is built (:class:`~attribot_rag.AttributorConfig`
checks them without loading anything), so a typo fails at construction with a
:class:`~attribot_rag.ConfigError`, not at the first ``invoke``, after the chain's LLM has
already run (and been paid for).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from attribot_rag import DEFAULT_MODEL, Attributor, AttributorConfig, ConfigError, PromptTemplate, shared_attributor
from attribot_rag.models import check_model_settings

from ._models import ModelLike

# AttributorConfig fields ScorerSettings sets itself; the rest may go in ``attributor_kwargs``.
_OWN_ARGS = frozenset({"model", "target", "proxy", "strategy", "template", "device", "dtype"})
_OPTIONS = frozenset(f.name for f in dataclasses.fields(AttributorConfig) if f.init) - _OWN_ARGS


def check_model(model: Any, what: str = "model") -> None:
    """Refuse a ``model`` that is not a name/path, a ``LoadedModel`` or a ``(model, tokenizer)`` pair."""
    check_model_settings(model, what=what)


@dataclass(frozen=True)
class ScorerSettings:
    """How to build (or which) :class:`~attribot_rag.Attributor` to use; resolved lazily, checked eagerly.

    Args:
        model: the local model that scores the answer: an embedded short name (default
            ``"smollm2-135m"``), a local folder, a ``LoadedModel`` or a ``(model, tokenizer)``
            pair. It need not be the model that wrote the answer: an answer from a chat model
            behind an API is scored as text by this one.
        proxy: an optional smaller model for the proxy strategies (same forms).
        strategy: an attribot-rag strategy preset or ``Strategy``.
        device / dtype: where and how to load named models (default: CUDA + bf16 if present).
            ``dtype`` is a ``torch.dtype`` or a name (``"fp32"``, ``"bf16"``, ``"fp16"``, ...).
        template: the prompt template the scorer renders (``PromptTemplate``).
        attributor: use this ``Attributor`` instead of building one (the fields above are ignored).
        attributor_kwargs: further ``Attributor`` arguments (hashable values), e.g. ``max_batch_size``.

    Raises:
        ConfigError: at construction, for an unknown strategy (or a proxy strategy without a
            proxy), a bad dtype or device, or an unknown / unhashable ``attributor_kwargs`` entry.
            Nothing is loaded: an unknown model *name* still fails at first use.
    """

    model: ModelLike = DEFAULT_MODEL
    proxy: ModelLike | None = None
    strategy: Any = "auto"
    device: str | None = None
    dtype: Any = None
    template: PromptTemplate | None = None
    attributor: Attributor | None = None
    attributor_kwargs: dict[str, Any] = field(default_factory=dict)

    config: AttributorConfig | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attributor is not None:
            if not isinstance(self.attributor, Attributor):
                raise ConfigError(f"attributor={type(self.attributor).__name__}: pass an attribot_rag.Attributor")
            return  # the other fields are ignored
        self._check_attributor_kwargs()
        config = AttributorConfig(self.model, self.proxy, strategy=self.strategy, template=self.template,
                                  device=self.device, dtype=self.dtype, **self.attributor_kwargs)
        object.__setattr__(self, "config", config)

    def _check_attributor_kwargs(self) -> None:
        for name, value in self.attributor_kwargs.items():
            if name not in _OPTIONS:
                hint = " (pass it as its own argument)" if name in _OWN_ARGS else ""
                raise ConfigError(f"attributor_kwargs has {name!r}, which is not an Attributor option{hint}: "
                                  f"use {', '.join(sorted(_OPTIONS))}")
            try:
                hash(value)
            except TypeError as exc:  # the shared-attributor cache keys on the values
                raise ConfigError(f"attributor_kwargs[{name!r}] = {value!r} is unhashable: pass a plain "
                                  "number, string or tuple") from exc

    def resolve(self) -> Attributor:
        """The attributor: given, or shared across every component with equal settings
        (:func:`attribot_rag.shared_attributor` of :attr:`config`).

        The first call loads the model (seconds); call it from a worker thread in async code.
        """
        if self.attributor is not None:
            return self.attributor
        return shared_attributor(self.config)

    def describe(self) -> str:
        """A short label for reprs."""
        if self.attributor is not None:
            return f"attributor={self.attributor.target.name!r}"
        name = self.model if isinstance(self.model, str) else type(self.model).__name__
        return f"model={name!r}, strategy={self.strategy!r}"
