"""Which local model scores answers: the settings every component of the package shares.

The settings are checked when a component is built (:func:`attribot_rag.models.check_model_settings`,
:meth:`ScorerSettings.__post_init__`), so a typo fails at construction with a
:class:`~attribot_rag.ConfigError`, not at the first ``invoke``, after the chain's LLM has
already run (and been paid for).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from attribot_rag import DEFAULT_MODEL, Attributor, ConfigError, PromptTemplate
from attribot_rag.attributor import OVERFLOW_POLICIES, resolve_strategy
from attribot_rag.models import check_model_settings

from ._models import ModelLike, shared_attributor

# Attributor arguments ScorerSettings sets itself; the rest may go in ``attributor_kwargs``.
_OWN_ARGS = frozenset({"target", "proxy", "strategy", "template", "device", "dtype"})


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

    def __post_init__(self) -> None:
        if self.attributor is not None:
            if not isinstance(self.attributor, Attributor):
                raise ConfigError(f"attributor={type(self.attributor).__name__}: pass an attribot_rag.Attributor")
            return  # the other fields are ignored
        check_model_settings(self.model, self.device, self.dtype)
        if self.proxy is not None:
            check_model_settings(self.proxy, self.device, self.dtype, "proxy")
        try:
            resolve_strategy(self.strategy, has_proxy=self.proxy is not None)
        except TypeError as exc:  # an unhashable value, looked up in the presets
            raise ConfigError(f"strategy={self.strategy!r}: pass a preset name or a Strategy") from exc
        if self.template is not None and not isinstance(self.template, PromptTemplate):
            raise ConfigError(f"template={type(self.template).__name__}: pass an attribot_rag.PromptTemplate")
        self._check_attributor_kwargs()

    def _check_attributor_kwargs(self) -> None:
        allowed = set(inspect.signature(Attributor).parameters) - _OWN_ARGS
        for name, value in self.attributor_kwargs.items():
            if name not in allowed:
                hint = " (pass it as its own argument)" if name in _OWN_ARGS else ""
                raise ConfigError(f"attributor_kwargs has {name!r}, which is not an Attributor option{hint}: "
                                  f"use {', '.join(sorted(allowed))}")
            try:
                hash(value)
            except TypeError as exc:  # the shared-attributor cache keys on the values
                raise ConfigError(f"attributor_kwargs[{name!r}] = {value!r} is unhashable: pass a plain "
                                  "number, string or tuple") from exc
        overflow = self.attributor_kwargs.get("overflow", "error")
        if overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"unknown overflow policy {overflow!r}: use one of {', '.join(OVERFLOW_POLICIES)}")

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
