"""Which local model scores answers: the settings every component of the package shares.

The settings are checked when a component is built (:class:`~attribot_rag.AttributorConfig`
checks them without loading anything), so a typo fails at construction with a
:class:`~attribot_rag.ConfigError`, not at the first ``invoke``, after the chain's LLM has
already run (and been paid for).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
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
    # attributors for per-call templates (a chain prompt with per-call variables): a few, not one per call
    _recent: OrderedDict = field(init=False, default_factory=OrderedDict, repr=False, compare=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False, compare=False)

    RECENT_TEMPLATES = 8

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

    def resolve(self, template: PromptTemplate | None = None, *, shared: bool = True) -> Attributor:
        """The attributor: given, or shared across every component with equal settings
        (:func:`attribot_rag.shared_attributor` of :attr:`config`).

        ``template`` replaces the settings' template (the chain's own prompt, see
        :class:`~langchain_attribot.ChainPrompt`); ``shared=False`` keeps the attributor for it in
        this component's small cache of recent templates, not the process-wide one (for templates
        that change from call to call). The models are shared either way. The first call loads the
        model (seconds); call it from a worker thread in async code.
        """
        if self.attributor is not None:
            if template is not None and template != self.attributor.template:
                raise ConfigError("a prompt to score under cannot change a given attributor's template: pass "
                                  "model=... instead of attributor=..., or no prompt")
            return self.attributor
        if template is None:
            return shared_attributor(self.config)
        config = self.config.replace(template=template)
        if shared:
            return shared_attributor(config)
        with self._lock:
            hit = self._recent.get(config)
            if hit is not None:
                self._recent.move_to_end(config)
                return hit
        built = config.build(share_models=True)
        with self._lock:
            built = self._recent.setdefault(config, built)
            while len(self._recent) > self.RECENT_TEMPLATES:
                self._recent.popitem(last=False)
        return built

    def describe(self) -> str:
        """A short label for reprs."""
        if self.attributor is not None:
            return f"attributor={self.attributor.target.name!r}"
        name = self.model if isinstance(self.model, str) else type(self.model).__name__
        return f"model={name!r}, strategy={self.strategy!r}"
