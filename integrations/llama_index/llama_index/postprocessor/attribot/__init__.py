"""LlamaIndex integration for attribot-rag: source nodes ranked by what the answer actually used.

* :class:`AttribotNodePostprocessor` re-ranks / filters nodes for a given answer (after generation).
* :class:`AttributedQueryEngine` wraps any query engine (streaming too); responses carry citations and
  ``cited_nodes`` beside the untouched ``source_nodes`` (``rerank=True`` re-ranks those).
* :class:`AttributedChatEngine` does the same for chat engines (ContextChatEngine, CondensePlusContextChatEngine).
* :class:`AttribotLLM` is an offline local LLM over attribot-rag's embedded models.
* :func:`llamaindex_qa_template` mirrors a LlamaIndex QA prompt as attribot's scoring prompt (the default).
"""

from attribot_rag import EmptyAnswerError, InputError, NoSourcesError
from attribot_rag.models import clear_model_cache

from .base import (
    ATTRIBUTION_SCORE_KEY,
    ATTRIBUTION_SHARE_KEY,
    CITATION_LABEL,
    METADATA_KEY,
    RETRIEVAL_SCORE_KEY,
    AttribotNodePostprocessor,
    AttributedNodes,
    NodeTextError,
    shared_model,
)
from .chat_engine import AttributedChatEngine, AttributedChatResponse, AttributedStreamingChatResponse
from .llm import AttribotLLM
from .prompts import llamaindex_qa_template
from .query_engine import (
    AttributedAsyncStreamingResponse,
    AttributedPydanticResponse,
    AttributedQueryEngine,
    AttributedResponse,
    AttributedStreamingResponse,
)

__all__ = [
    "ATTRIBUTION_SCORE_KEY",
    "ATTRIBUTION_SHARE_KEY",
    "CITATION_LABEL",
    "METADATA_KEY",
    "RETRIEVAL_SCORE_KEY",
    "AttribotLLM",
    "AttribotNodePostprocessor",
    "AttributedAsyncStreamingResponse",
    "AttributedChatEngine",
    "AttributedChatResponse",
    "AttributedNodes",
    "AttributedPydanticResponse",
    "AttributedQueryEngine",
    "AttributedResponse",
    "AttributedStreamingChatResponse",
    "AttributedStreamingResponse",
    "EmptyAnswerError",
    "InputError",
    "NoSourcesError",
    "NodeTextError",
    "clear_model_cache",
    "shared_model",
    "llamaindex_qa_template",
]
