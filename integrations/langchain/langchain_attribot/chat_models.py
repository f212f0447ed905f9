"""A local chat model over attribot-rag's embedded models (offline RAG chains, demos, tests)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from attribot_rag import DEFAULT_MODEL, LoadedModel
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from ._models import model_lock, shared_model

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


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
        >>> llm = ChatAttribot(max_new_tokens=48)
        >>> llm.invoke("What is the capital of France?").text

    Args:
        model: an embedded short name (default ``"smollm2-135m"``), a local model folder, or a
            ``LoadedModel``.
        device / dtype: where and how to load a named model.
        max_new_tokens: the most tokens to generate.
    """

    model: Any = DEFAULT_MODEL
    device: str | None = None
    dtype: str | None = None
    max_new_tokens: int = 128

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    @property
    def _llm_type(self) -> str:
        return "attribot-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        name = self.model.name if isinstance(self.model, LoadedModel) else str(self.model)
        return {"model": name, "max_new_tokens": self.max_new_tokens, "dtype": self.dtype}

    def _loaded(self) -> LoadedModel:
        return shared_model(self.model, device=self.device, dtype=self.dtype)

    def _prompt_ids(self, loaded: LoadedModel, messages: list[BaseMessage]) -> list[int]:
        turns = [{"role": _ROLES.get(m.type, "user"), "content": str(m.text)} for m in messages]
        tok = loaded.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        text = "\n\n".join(t["content"] for t in turns) + "\n\n"
        return list(tok(text)["input_ids"])

    def _generate_kwargs(self, loaded: LoadedModel, ids: list[int], max_new_tokens: int | None) -> dict[str, Any]:
        import torch

        input_ids = torch.tensor([ids], device=loaded.device)
        tok = loaded.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False, pad_token_id=pad)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        import torch

        loaded = self._loaded()
        ids = self._prompt_ids(loaded, messages)
        with model_lock(loaded), torch.inference_mode():
            out = loaded.model.generate(**self._generate_kwargs(loaded, ids, kwargs.get("max_new_tokens")))
        new = out[0, len(ids):].tolist()
        text, _ = _cut(loaded.tokenizer.decode(new, skip_special_tokens=True).strip(), stop)
        usage = UsageMetadata(input_tokens=len(ids), output_tokens=len(new), total_tokens=len(ids) + len(new))
        message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": loaded.name})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        loaded = self._loaded()
        ids = self._prompt_ids(loaded, messages)
        halt = threading.Event()

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> bool:
                return halt.is_set()

        streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        n_new = [0]
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with model_lock(loaded), torch.inference_mode():
                    out = loaded.model.generate(
                        **self._generate_kwargs(loaded, ids, kwargs.get("max_new_tokens")),
                        streamer=streamer, stopping_criteria=StoppingCriteriaList([_Halt()]),
                    )
                n_new[0] = out.shape[1] - len(ids)
            except BaseException as exc:  # surfaced in the consuming thread
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, name="ChatAttribot-generate", daemon=True)
        thread.start()
        hold = max((len(s) for s in stop or []), default=1) - 1  # a stop string may straddle pieces
        text, sent = "", 0
        try:
            for piece in streamer:
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
            halt.set()
            thread.join()
        if failure:
            raise failure[0]
        rest, _ = _cut(text.strip(), stop)
        if len(rest) > sent:
            if run_manager:
                run_manager.on_llm_new_token(rest[sent:])
            yield ChatGenerationChunk(message=AIMessageChunk(content=rest[sent:]))
        usage = UsageMetadata(input_tokens=len(ids), output_tokens=n_new[0], total_tokens=len(ids) + n_new[0])
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage, response_metadata={"model_name": loaded.name}, chunk_position="last",
        ))
