"""A local chat model over attribot-rag's embedded models (offline RAG chains, demos, tests)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from attribot_rag import DEFAULT_MODEL, ConfigError, LoadedModel
from attribot_rag.errors import is_count
from attribot_rag.generation import generate, stream
from attribot_rag.models import check_model_settings, dtype_name, resolve_dtype
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from ._models import ModelLike, shared_model
from ._settings import check_model

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}
_ADVICE = "send fewer or shorter messages, or lower max_tokens"


def _model_name(model: ModelLike) -> str:
    """A model's name for traces: its short name or path, or a model object's name."""
    if isinstance(model, LoadedModel):
        return model.name
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    if isinstance(model, tuple) and len(model) == 2:
        return getattr(getattr(model[0], "config", None), "_name_or_path", None) or type(model[0]).__name__
    return type(model).__name__


def _check_max_tokens(n: Any, what: str = "max_new_tokens (max_tokens)") -> int:
    if not is_count(n, 1):
        raise ConfigError(f"{what}={n!r}: pass the most tokens to generate, an int >= 1")
    return n


def _one_max_tokens(kwargs: Mapping[str, Any]) -> Any:
    """The value of ``max_new_tokens`` / ``max_tokens`` in ``kwargs`` (``None``: neither); both must agree."""
    given = {k: kwargs[k] for k in ("max_new_tokens", "max_tokens") if kwargs.get(k) is not None}
    if len(given) == 2 and given["max_new_tokens"] != given["max_tokens"]:
        raise ConfigError(f"max_new_tokens={given['max_new_tokens']!r} and max_tokens={given['max_tokens']!r} "
                          "are one setting under two names: pass one of them")
    return next(iter(given.values()), None)


def _cut(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop or [] if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class ChatAttribot(BaseChatModel):
    """Greedy generation with a local causal LM: an embedded attribot-rag model by default.

    It needs no network and no API key, which makes fully offline RAG chains possible (and
    testable). The weights are shared with the citation components of this package: an
    ``AttribotCitations`` with the same ``model``/``device``/``dtype`` reuses them. Messages
    are rendered with the tokenizer's chat template; decoding is greedy (deterministic).
    ``stream`` yields text as it is decoded, and the last chunk carries token usage.

    Example:
        >>> llm = ChatAttribot(max_tokens=48)  # or max_new_tokens=48
        >>> llm.invoke("What is the capital of France?").text

    Per call, ``invoke``/``stream``/``batch`` (and ``.bind(...)``) take ``max_tokens`` (or
    ``max_new_tokens``) and ``model`` (another model of the forms below, loaded and shared on
    first use), besides ``stop``. Other sampling parameters (``temperature``, ...) do not apply
    to greedy decoding and are ignored.

    Args:
        model: an embedded short name (default ``"smollm2-135m"``), a local model folder, a
            ``LoadedModel`` or a ``(model, tokenizer)`` pair.
        device / dtype: where and how to load a named model; ``dtype`` is a ``torch.dtype`` or a
            name (``"fp32"``, ``"bf16"``, ``"fp16"``, ...). Not for model objects (cast those first).
        max_new_tokens: the most tokens to generate; ``max_tokens``, LangChain's standard name,
            is an alias.

    Raises:
        ConfigError: at construction, for a bad ``model`` type, ``dtype`` or ``device``, a
            ``device``/``dtype`` given with a model object, or ``max_new_tokens < 1``.
    """

    model: Any = DEFAULT_MODEL
    device: str | None = None
    dtype: Any = None  # a torch.dtype or a name from attribot-rag's table; checked in __init__
    max_new_tokens: int = Field(default=128, alias="max_tokens")

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True)

    def __init__(self, **kwargs: Any) -> None:
        """Build the model's settings; nothing is loaded until the first call."""
        _one_max_tokens(kwargs)  # pydantic would silently keep the alias's value
        super().__init__(**kwargs)
        # Checked here, not in a pydantic validator, which would wrap ConfigError in a ValidationError.
        check_model_settings(self.model, self.device, self.dtype)
        _check_max_tokens(self.max_new_tokens)

    @property
    def _llm_type(self) -> str:
        return "attribot-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        dtype = None if self.dtype is None else dtype_name(resolve_dtype(self.dtype))  # "fp32" == torch.float32
        return {"model": _model_name(self.model), "max_new_tokens": self.max_new_tokens, "dtype": dtype}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Standard tracing parameters; per-call ``model`` / ``max_tokens`` overrides win.

        No ``ls_temperature``: decoding is greedy, there is no temperature to report.
        """
        model = kwargs.get("model") or self.model
        max_tokens = kwargs.get("max_new_tokens") or kwargs.get("max_tokens") or self.max_new_tokens
        params = LangSmithParams(ls_provider="attribot", ls_model_name=_model_name(model), ls_model_type="chat")
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):  # tracing never raises
            params["ls_max_tokens"] = max_tokens
        if stop:
            params["ls_stop"] = stop
        return params

    def _loaded(self, model: ModelLike | None = None) -> LoadedModel:
        """The weights to generate with: ``model`` (a per-call override) or the configured one."""
        if model is None:
            return shared_model(self.model, device=self.device, dtype=self.dtype)
        check_model(model)
        # device/dtype are for named models; an override object is used as it is
        named = isinstance(model, (str, os.PathLike))
        return shared_model(model, device=self.device if named else None, dtype=self.dtype if named else None)

    def _call_max_tokens(self, kwargs: Mapping[str, Any]) -> int:
        """The per-call ``max_new_tokens``/``max_tokens`` (they are aliases), else the configured one."""
        n = _one_max_tokens(kwargs)
        return _check_max_tokens(self.max_new_tokens if n is None else n)

    def _prompt_ids(self, loaded: LoadedModel, messages: list[BaseMessage]) -> list[int]:
        turns = [{"role": _ROLES.get(m.type, "user"), "content": str(m.text)} for m in messages]
        tok = loaded.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        text = "\n\n".join(t["content"] for t in turns) + "\n\n"
        return list(tok(text)["input_ids"])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        max_new_tokens = self._call_max_tokens(kwargs)  # before loading: a bad value costs nothing
        loaded = self._loaded(kwargs.get("model"))
        ids = self._prompt_ids(loaded, messages)
        out = generate(loaded, ids, max_new_tokens, advice=_ADVICE)  # holds the model's lock
        text, _ = _cut(out.text, stop)
        n_new = len(out.token_ids)
        usage = UsageMetadata(input_tokens=len(ids), output_tokens=n_new, total_tokens=len(ids) + n_new)
        message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": loaded.name})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        max_new_tokens = self._call_max_tokens(kwargs)
        loaded = self._loaded(kwargs.get("model"))
        ids = self._prompt_ids(loaded, messages)
        pieces = stream(loaded, ids, max_new_tokens, advice=_ADVICE)  # decodes in a thread holding the model's lock
        hold = max((len(s) for s in stop or []), default=1) - 1  # a stop string may straddle pieces
        text, sent = "", 0
        try:
            for piece in pieces:
                text += piece
                shown = text.lstrip()  # like invoke, which strips the answer
                cut, stopped = _cut(shown, stop)
                # hold back a possible stop-string prefix and trailing space (invoke strips it)
                ready = cut if stopped else cut[: max(len(cut) - hold, 0)].rstrip()
                if len(ready) > sent:
                    delta, sent = ready[sent:], len(ready)
                    if run_manager:
                        run_manager.on_llm_new_token(delta)
                    yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if stopped:
                    break
        finally:
            pieces.close()  # stops decoding at a stop string (or when the consumer stops early)
        rest, _ = _cut(text.strip(), stop)
        if len(rest) > sent:
            if run_manager:
                run_manager.on_llm_new_token(rest[sent:])
            yield ChatGenerationChunk(message=AIMessageChunk(content=rest[sent:]))
        n_new = len(pieces.token_ids or ())
        usage = UsageMetadata(input_tokens=len(ids), output_tokens=n_new, total_tokens=len(ids) + n_new)
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage, response_metadata={"model_name": loaded.name}, chunk_position="last",
        ))
