"""Citations for chat engine answers (ContextChatEngine, CondensePlusContextChatEngine, ...)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any

from attribot_rag import ConfigError
from attribot_rag.errors import is_count
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.chat_engine.types import AgentChatResponse, BaseChatEngine, StreamingAgentChatResponse
from llama_index.core.schema import NodeWithScore

from .base import METADATA_KEY, AttribotNodePostprocessor, AttributedNodes


@dataclass
class AttributedChatResponse(AgentChatResponse):
    """An :class:`AgentChatResponse` with ``cited_nodes``: the source nodes the answer used, most relied-on first."""

    cited_nodes: list[NodeWithScore] = field(default_factory=list)


@dataclass
class AttributedStreamingChatResponse(StreamingAgentChatResponse):
    """A finished chat stream with attribution: ``response_gen`` replays the whole answer once.

    ``metadata["attribot"]`` holds the citations and ``cited_nodes`` the nodes the answer used, as
    on :class:`AttributedChatResponse`.
    """

    metadata: dict[str, Any] | None = None
    cited_nodes: list[NodeWithScore] = field(default_factory=list)


def _replay(text: str) -> Generator[ChatResponse, None, None]:
    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=text)


async def _areplay(text: str) -> AsyncGenerator[ChatResponse, None]:
    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=text)


def _drain(response: StreamingAgentChatResponse | AgentChatResponse) -> str:
    """Consume a chat stream (the engine also finishes writing its memory) and return the text."""
    if isinstance(response, StreamingAgentChatResponse):
        for _ in response.response_gen:
            pass
    return response.response


async def _adrain(response: StreamingAgentChatResponse | AgentChatResponse) -> str:
    if isinstance(response, StreamingAgentChatResponse):
        async for _ in response.async_response_gen():
            pass
    return response.response


class AttributedChatEngine(BaseChatEngine):
    """Wraps a retrieval chat engine; each answer gets re-ranked source nodes and citations.

    Works with any chat engine whose responses carry ``source_nodes`` (``ContextChatEngine``,
    ``CondensePlusContextChatEngine``, ...). Each turn's answer is attributed over that turn's
    source nodes: ``response.source_nodes`` keep the retriever's order and scores (filtered, in
    that order, if the postprocessor filters; re-ranked by attribution with ``rerank=True``, as
    :class:`AttributedQueryEngine` does), ``response.cited_nodes`` are the nodes the answer used
    and ``response.metadata["attribot"]`` holds the citations.

    The question attributed with is the standalone question the engine retrieved with when it
    reports one (``CondensePlusContextChatEngine`` condenses the chat history into it), else the
    user's message. The last ``history_messages`` user/assistant messages before the turn are
    rendered before it as context (never ablated), so "and when was it built?" is scored in
    its conversation.

    A turn with no source nodes (or no answer text) comes back unattributed, with
    ``metadata["attribot"]["skipped"]`` saying why: the engine has written it to memory already.

    Streaming (``stream_chat``/``astream_chat``): the wrapped stream is consumed first, since
    attribution needs the whole answer, and the returned response replays it in one chunk.

    Args:
        chat_engine: the chat engine to wrap.
        postprocessor: does the attribution (default: :class:`AttribotNodePostprocessor()`).
        use_retrieval_question: attribute with the engine's retrieval (condensed) question.
        history_messages: how many of the latest earlier messages to score the answer in (0: none).
        rerank: return ``source_nodes`` re-ranked by attribution (``score`` = attribution score).
    """

    def __init__(
        self,
        chat_engine: BaseChatEngine,
        postprocessor: AttribotNodePostprocessor | None = None,
        use_retrieval_question: bool = True,
        history_messages: int = 4,
        rerank: bool = False,
    ) -> None:
        if not is_count(history_messages):
            raise ConfigError(f"history_messages must be an int >= 0, got {history_messages!r}")
        self._chat_engine = chat_engine
        self.postprocessor = postprocessor or AttribotNodePostprocessor()
        self.use_retrieval_question = use_retrieval_question
        self.history_messages = history_messages
        self.rerank = rerank

    @classmethod
    def from_defaults(
        cls, chat_engine: BaseChatEngine, use_retrieval_question: bool = True, history_messages: int = 4,
        rerank: bool = False, **kwargs: Any,
    ) -> AttributedChatEngine:
        """Wrap ``chat_engine``; ``kwargs`` build the :class:`AttribotNodePostprocessor`."""
        return cls(chat_engine, AttribotNodePostprocessor(**kwargs), use_retrieval_question, history_messages,
                   rerank)

    @property
    def chat_engine(self) -> BaseChatEngine:
        """The wrapped chat engine."""
        return self._chat_engine

    # ------------------------------------------------------------------ BaseChatEngine
    def reset(self) -> None:
        """Reset the wrapped engine's conversation."""
        self._chat_engine.reset()

    @property
    def chat_history(self) -> list[ChatMessage]:
        """The wrapped engine's chat history."""
        return self._chat_engine.chat_history

    def chat(
        self, message: str, chat_history: list[ChatMessage] | None = None, **kwargs: Any
    ) -> AttributedChatResponse:
        """Chat, then attribute the answer over the turn's source nodes."""
        prior = self._prior(chat_history)
        response = self._chat_engine.chat(message, chat_history, **kwargs)
        text = _drain(response)
        attributed = self.postprocessor.attribute_turn(
            response.source_nodes, self._question(message, response), text, prior
        )
        return self._response(response, text, attributed)

    async def achat(
        self, message: str, chat_history: list[ChatMessage] | None = None, **kwargs: Any
    ) -> AttributedChatResponse:
        """Async :meth:`chat`; attribution runs in a worker thread."""
        prior = self._prior(chat_history)
        response = await self._chat_engine.achat(message, chat_history, **kwargs)
        text = await _adrain(response)
        attributed = await self.postprocessor.aattribute_turn(
            response.source_nodes, self._question(message, response), text, prior
        )
        return self._response(response, text, attributed)

    def stream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None, **kwargs: Any
    ) -> AttributedStreamingChatResponse:
        """Stream from the wrapped engine to the end, attribute, and replay the answer in one chunk."""
        prior = self._prior(chat_history)
        response = self._chat_engine.stream_chat(message, chat_history, **kwargs)
        text = _drain(response)
        attributed = self.postprocessor.attribute_turn(
            response.source_nodes, self._question(message, response), text, prior
        )
        return self._streaming(response, text, attributed)

    async def astream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None, **kwargs: Any
    ) -> AttributedStreamingChatResponse:
        """Async :meth:`stream_chat`."""
        prior = self._prior(chat_history)
        response = await self._chat_engine.astream_chat(message, chat_history, **kwargs)
        text = await _adrain(response)
        attributed = await self.postprocessor.aattribute_turn(
            response.source_nodes, self._question(message, response), text, prior
        )
        return self._streaming(response, text, attributed)

    # ------------------------------------------------------------------ internals
    def _prior(self, chat_history: list[ChatMessage] | None) -> list[dict[str, str]]:
        """The latest user/assistant messages before this turn (read before the engine adds the turn)."""
        if self.history_messages == 0:
            return []
        messages = chat_history if chat_history is not None else self._chat_engine.chat_history
        roles = {MessageRole.USER: "user", MessageRole.ASSISTANT: "assistant"}
        kept = [{"role": roles[m.role], "content": m.content} for m in messages
                if m.role in roles and isinstance(m.content, str) and m.content.strip()]
        return kept[-self.history_messages:]

    def _question(self, message: str, response: AgentChatResponse | StreamingAgentChatResponse) -> str:
        """The standalone question the engine retrieved with, else the user's message."""
        if self.use_retrieval_question:
            for source in response.sources or []:
                raw = getattr(source, "raw_input", None)
                if getattr(source, "tool_name", None) == "retriever" and isinstance(raw, dict):
                    question = raw.get("message")
                    if isinstance(question, str) and question.strip():
                        return question
        return message

    @staticmethod
    def _metadata(response: Any, attributed: AttributedNodes) -> dict[str, Any]:
        metadata = dict(getattr(response, "metadata", None) or {})
        metadata[METADATA_KEY] = attributed.metadata
        return metadata

    def _response(self, response: Any, text: str, attributed: AttributedNodes) -> AttributedChatResponse:
        return AttributedChatResponse(
            response=text,
            sources=list(response.sources),
            source_nodes=attributed.nodes if self.rerank else attributed.retrieved,
            metadata=self._metadata(response, attributed),
            cited_nodes=attributed.cited_nodes,
        )

    def _streaming(self, response: Any, text: str, attributed: AttributedNodes) -> AttributedStreamingChatResponse:
        return AttributedStreamingChatResponse(
            response=text,
            sources=list(response.sources),
            source_nodes=attributed.nodes if self.rerank else attributed.retrieved,
            chat_stream=_replay(text),
            achat_stream=_areplay(text),
            is_writing_to_memory=False,  # the wrapped engine already wrote the turn to its memory
            metadata=self._metadata(response, attributed),
            cited_nodes=attributed.cited_nodes,
        )
