"""Attributor settings checked without loading a model, and process-wide sharing of attributors.

In the spirit of peft's configs: an :class:`AttributorConfig` holds every :class:`Attributor`
argument and checks them all when it is made (a typo fails there, with the library's typed
errors, before any weights load); :meth:`AttributorConfig.build` makes the attributor.

:func:`shared_attributor` builds one attributor per distinct config in the process and hands
the same object to every caller (threads, event loops, the LangChain and LlamaIndex
integrations); its models come from :func:`~attribot_rag.models.shared_model`, so equal model
settings also mean one set of weights. :func:`~attribot_rag.models.clear_model_cache` forgets
the shared attributors with the models; :func:`clear_shared_attributors` forgets attributors only.

Example:
    >>> config = AttributorConfig("smollm2-135m", strategy="hierarchical", dtype="fp32")  # checked, not loaded
    >>> attributor = shared_attributor(config)  # loaded once per process
    >>> attributor is shared_attributor(AttributorConfig("smollm2-135m", dtype=torch.float32))
    True
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

from .attributor import Attributor, Strategy, check_settings
from .errors import ConfigError
from .models import DEFAULT_MODEL, LoadedModel, model_key, on_clear_model_cache, shared_model
from .prompt import PromptTemplate
from .spans import DEFAULT_MAX_SENTENCE_TOKENS


@dataclass(frozen=True, eq=False)
class AttributorConfig:
    """Every :class:`~attribot_rag.Attributor` argument, checked at construction; nothing loads until :meth:`build`.

    Args:
        model: the target model: an embedded short name, a local folder / ``.gguf`` / Hub id, a
            :class:`~attribot_rag.LoadedModel` or a ``(model, tokenizer)`` pair.
        proxy: an optional smaller model (same forms).
        strategy / template / device / dtype / max_batch_tokens / max_batch_size /
            max_sentence_tokens / overflow / progress: as :class:`~attribot_rag.Attributor` takes them.

    Two configs are equal (and hash alike) when they would build the same attributor: named
    models compare by what they load as (``dtype="fp32"`` is ``torch.float32``, ``device=None``
    is the default device), model objects by identity, ``strategy="auto"`` as the preset it
    stands for, ``template=None`` as the default template.

    Raises:
        ConfigError: any bad setting (see :func:`attribot_rag.attributor.check_settings`).
        DeviceError: an unknown dtype or a device this machine does not have (a ``ConfigError`` too).
    """

    model: Any = DEFAULT_MODEL
    proxy: Any = None
    strategy: str | Strategy = "auto"
    template: PromptTemplate | None = None
    device: str | None = None
    dtype: Any = None
    max_batch_tokens: int | None = None
    max_batch_size: int | None = None
    max_sentence_tokens: int | None = DEFAULT_MAX_SENTENCE_TOKENS
    overflow: str = "error"
    progress: bool = False
    _key: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        strategy = check_settings(
            self.model, self.proxy, strategy=self.strategy, template=self.template, device=self.device,
            dtype=self.dtype, max_batch_tokens=self.max_batch_tokens, max_batch_size=self.max_batch_size,
            max_sentence_tokens=self.max_sentence_tokens, overflow=self.overflow, progress=self.progress,
        )
        key = (
            model_key(self.model, self.device, self.dtype),
            None if self.proxy is None else model_key(self.proxy, self.device, self.dtype),
            strategy, self.template or PromptTemplate(), self.max_batch_tokens, self.max_batch_size,
            self.max_sentence_tokens, self.overflow, self.progress,
        )
        object.__setattr__(self, "_key", key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AttributorConfig) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def replace(self, **changes: Any) -> AttributorConfig:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def attributor_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~attribot_rag.Attributor` besides the two models."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.init and f.name not in ("model", "proxy")}

    def build(self, *, share_models: bool = False) -> Attributor:
        """A new :class:`~attribot_rag.Attributor` with these settings (loads named models: seconds).

        ``share_models=True`` takes named models from :func:`~attribot_rag.models.shared_model`
        (one copy per process) instead of loading a copy of its own.
        """
        if not share_models:
            return Attributor(self.model, self.proxy, **self.attributor_kwargs())
        kwargs = self.attributor_kwargs()
        device, dtype = kwargs.pop("device"), kwargs.pop("dtype")
        target = shared_model(self.model, device=device, dtype=dtype)
        proxy = None if self.proxy is None else shared_model(self.proxy, device=device, dtype=dtype)
        return Attributor(target, proxy, **kwargs)


_GUARD = threading.Lock()  # guards the tables below; never held while loading or building
_ATTRIBUTORS: dict[AttributorConfig, Attributor] = {}
_BUILDING: dict[AttributorConfig, threading.Lock] = {}
_GENERATION = [0]  # bumped by every clear: a build that straddles a clear is not kept


def shared_attributor(config: AttributorConfig | None = None, /, **settings: Any) -> Attributor:
    """The process-wide :class:`~attribot_rag.Attributor` for ``config`` (or for
    ``AttributorConfig(**settings)``): built on first use, the same object afterwards.

    Thread-safe: concurrent first calls with equal configs build it once, the others wait; the
    models come from :func:`~attribot_rag.models.shared_model`. The first call loads the model
    (seconds): in async code, call it from a worker thread.
    """
    if config is None:
        config = AttributorConfig(**settings)
    elif settings:
        raise ConfigError(f"pass an AttributorConfig or settings, not both (got {sorted(settings)} too)")
    elif not isinstance(config, AttributorConfig):
        raise ConfigError(f"shared_attributor takes an AttributorConfig, not {type(config).__name__}: "
                          "pass AttributorConfig(...) or the settings as keywords")
    with _GUARD:
        hit = _ATTRIBUTORS.get(config)
        if hit is not None:
            return hit
        building = _BUILDING.setdefault(config, threading.Lock())
        generation = _GENERATION[0]
    with building:  # one builder per config; later arrivals find it built
        with _GUARD:
            hit = _ATTRIBUTORS.get(config)
            if hit is not None:
                return hit
        attributor = config.build(share_models=True)
        with _GUARD:
            _BUILDING.pop(config, None)
            if _GENERATION[0] == generation:  # not cleared while it was built
                attributor = _ATTRIBUTORS.setdefault(config, attributor)
        return attributor


def clear_shared_attributors(*models: LoadedModel) -> None:
    """Forget the shared attributors (each is freed once nothing else holds it); with ``models``,
    only those running one of them. A build running meanwhile is not kept (when all are cleared)."""
    with _GUARD:
        if not models:
            _ATTRIBUTORS.clear()
            _GENERATION[0] += 1
            return
        gone = {id(m) for m in models}
        for config, att in list(_ATTRIBUTORS.items()):
            held = {id(att.target.loaded)} | ({id(att.proxy.loaded)} if att.proxy is not None else set())
            if held & gone:
                del _ATTRIBUTORS[config]


on_clear_model_cache(clear_shared_attributors)  # the shared attributors hold the models being forgotten
