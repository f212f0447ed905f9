"""A local LlamaIndex LLM over an attribot-rag model (embedded SmolLM2 by default), fully offline.

Handy for trying the integration without an API key, and used by the end-to-end test. Any
other LlamaIndex LLM works with the query and chat engine wrappers just as well.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any

from attribot_rag import DEFAULT_MODEL, LoadedModel
from attribot_rag.generation import generate, stream
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from .base import shared_model

_ADVICE = "retrieve fewer or smaller chunks"


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_messages(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """Chat messages as the model's prompt text: its chat template, or plain role-prefixed turns."""
    turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(f"{t['role']}: {t['content']}" for t in turns) + "\n\nassistant:"


def render_completion(tokenizer: Any, prompt: str) -> str:
    """A completion prompt as one user turn of the chat template (unchanged for base models)."""
    if _has_chat_template(tokenizer):
        return render_messages(tokenizer, [ChatMessage(role="user", content=prompt)])
    return prompt


class AttribotLLM(CustomLLM):
    """Greedy generation from a local causal LM, with the tokenizer's chat template.

    Args:
        model: an attribot-rag model name (default the embedded ``"smollm2-135m"``), a local
            folder, or an already loaded :class:`attribot_rag.LoadedModel` (share it with the
            :class:`attribot_rag.Attributor` to hold the weights once).
        max_new_tokens: most tokens generated per answer.
        dtype / device: passed to :func:`attribot_rag.load_model` when loading by name.
    """

    model_name: str = Field(default=DEFAULT_MODEL, description="The model's name.")
    max_new_tokens: int = Field(default=128, gt=0, description="Most tokens generated per answer.")
    context_window: int = Field(default=2048, gt=0, description="The model's context window in tokens.")
    dtype: str | None = Field(default=None, description="dtype the model was loaded with by name, if given.")
    device: str | None = Field(default=None, description="Device the model was loaded on by name, if given.")

    _loaded: LoadedModel = PrivateAttr()

    def __init__(
        self,
        model: str | LoadedModel = DEFAULT_MODEL,
        *,
        max_new_tokens: int = 128,
        dtype: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        # from_dict(to_dict()) passes the serialized model_name: load that model
        model = kwargs.pop("model_name", None) or model
        loaded = model if isinstance(model, LoadedModel) else shared_model(model, dtype, device)
        kwargs.setdefault("context_window", loaded.context_window or 2048)
        kwargs.setdefault("messages_to_prompt", functools.partial(render_messages, loaded.tokenizer))
        kwargs.setdefault("completion_to_prompt", functools.partial(render_completion, loaded.tokenizer))
        super().__init__(model_name=loaded.name, max_new_tokens=max_new_tokens, dtype=dtype, device=device, **kwargs)
        self._loaded = loaded

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serializes this component under."""
        return "AttribotLLM"

    @property
    def loaded(self) -> LoadedModel:
        """The underlying model and tokenizer."""
        return self._loaded

    @property
    def metadata(self) -> LLMMetadata:
        """Chat model metadata: prompts arrive as messages and are rendered with the chat template."""
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=_has_chat_template(self._loaded.tokenizer),
            model_name=self.model_name,
        )

    def _render(self, prompt: str, formatted: bool) -> str:
        return prompt if formatted else self.completion_to_prompt(prompt)

    def _prompt_ids(self, text: str) -> list[int]:
        tokenizer = self._loaded.tokenizer
        return list(tokenizer(text, add_special_tokens=not _has_chat_template(tokenizer))["input_ids"])

    # ------------------------------------------------------------------ LLM interface
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Greedy completion; ``formatted=False`` wraps the prompt as one user turn.

        Raises:
            attribot_rag.ContextTooLongError: the prompt leaves no room for ``max_new_tokens``.
        """
        ids = self._prompt_ids(self._render(prompt, formatted))
        out = generate(self._loaded, ids, self.max_new_tokens, context_window=self.context_window, advice=_ADVICE)
        return CompletionResponse(text=out.text)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Streamed greedy completion (generation runs in a thread, text arrives as it decodes)."""
        ids = self._prompt_ids(self._render(prompt, formatted))
        pieces = stream(self._loaded, ids, self.max_new_tokens, context_window=self.context_window, advice=_ADVICE)

        def gen() -> CompletionResponseGen:
            text = ""
            with pieces:  # closing the generator after a few chunks stops the decoding too
                for delta in pieces:
                    if not text:
                        delta = delta.lstrip()
                    if delta:
                        text += delta
                        yield CompletionResponse(text=text, delta=delta)

        return gen()

    # Async: generation runs in a worker thread, so the event loop keeps serving other tasks
    # (CustomLLM's defaults call the blocking sync methods on the loop).
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async :meth:`complete`, off the event loop."""
        return await asyncio.to_thread(self.complete, prompt, formatted, **kwargs)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async ``chat``, off the event loop."""
        return await asyncio.to_thread(self.chat, messages, **kwargs)

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`: each chunk is awaited from a worker thread."""
        return _in_thread(self.stream_complete(prompt, formatted=formatted, **kwargs))

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Async ``stream_chat``: each chunk is awaited from a worker thread."""
        return _in_thread(self.stream_chat(messages, **kwargs))


async def _in_thread(items: Iterator[Any]) -> AsyncGenerator[Any, None]:
    """Iterate a blocking iterator without blocking the event loop: each ``next`` runs in a thread."""
    done = object()
    while (item := await asyncio.to_thread(next, items, done)) is not done:
        yield item
