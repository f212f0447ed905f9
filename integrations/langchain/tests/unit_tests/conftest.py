"""Unit-test fixtures: a tiny randomly initialised causal LM (fp32) built offline, and a small RAG setup.

The tiny model's scores mean nothing, but they are deterministic, so everything the integration
adds (shapes, offsets, batching, streaming, callbacks, errors) can be checked against the core.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from attribot_rag.decisions import DecisionRule

QUESTION = "Who built the Eiffel Tower?"
ANSWER = "Gustave Eiffel built the tower in 1889. It stands in Paris, the capital of France."

# A random model's context never supports its answer, so the default rule uses and cites nothing.
# Tests of the leave-one-out mechanics pass this rule: leave-one-out alone decides (no support or
# sufficiency check, no noise floor), every scored document counts as used (the tiny model scores
# one document positively) and every positively scoring sentence is cited (``min_citation=0``).
LOO_RULE = DecisionRule(min_lift=None, min_sufficiency=None, noise_factor=0, min_loo=-1e9, min_share=None,
                        min_citation=0.0)


@pytest.fixture(scope="session")
def lc_tiny():
    """A tiny LoadedModel (random weights, byte-level BPE tokenizer with a chat template)."""
    from attribot_rag.testing import tiny_loaded_model

    return tiny_loaded_model()


@pytest.fixture(scope="session")
def lc_attributor(lc_tiny):
    """The shared attributor every unit test's components resolve to (``model=lc_tiny``)."""
    from langchain_attribot import shared_attributor

    return shared_attributor(lc_tiny)


@pytest.fixture
def docs():
    """Three retrieved documents with ids, a title and a URL."""
    from langchain_core.documents import Document

    return [
        Document(id="capitals", page_content="Paris is the capital of France. Berlin is in Germany.",
                 metadata={"title": "Capitals", "url": "https://example.org/capitals"}),
        Document(id="tower", page_content="The Eiffel Tower was built in 1889. Gustave Eiffel built it. "
                 "The dog is lazy.", metadata={"title": "Eiffel Tower", "source": "https://example.org/tower"}),
        Document(id="fox", page_content="The quick brown fox jumps over the lazy dog.", metadata={"page": 3}),
    ]


@pytest.fixture
def values(docs) -> dict[str, Any]:
    """The chain dict the citation step receives."""
    return {"question": QUESTION, "context": docs, "answer": ANSWER}


@pytest.fixture
def fake_llm():
    """A chat model that always answers ``ANSWER`` (and streams it word by word)."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    return GenericFakeChatModel(messages=itertools.cycle([ANSWER]))


@pytest.fixture
def retriever(docs):
    """A retriever that returns ``docs`` (fires the retriever callbacks like any other)."""
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class FixedRetriever(BaseRetriever):
        documents: list[Document]

        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun):
            return list(self.documents)

    return FixedRetriever(documents=docs)


@pytest.fixture
def prompt():
    from langchain_core.prompts import ChatPromptTemplate

    return ChatPromptTemplate.from_messages([
        ("system", "Answer from the documents.\n\n{context}"),
        ("human", "{question}"),
    ])


@pytest.fixture
def fake_loads(monkeypatch, lc_tiny):
    """Named models "load" as fresh wrappers of the tiny model; yields the ``(name, device, dtype)`` calls.

    Each load is a distinct ``LoadedModel`` (so a second load is visible); the cache entries and
    attributors built on them are removed afterwards.
    """
    import attribot_rag.models as core_models
    from attribot_rag import LoadedModel, clear_model_cache

    calls: list[tuple] = []
    loaded: list[LoadedModel] = []

    def fake_load(name, *, device=None, dtype=None):
        calls.append((name, device, dtype))
        loaded.append(LoadedModel(name=name, model=lc_tiny.model, tokenizer=lc_tiny.tokenizer))
        return loaded[-1]

    monkeypatch.setattr(core_models, "load_model", fake_load)
    yield calls
    clear_model_cache(*loaded)  # those models, and the shared attributors built on them
