"""Fixtures for the LlamaIndex integration tests: a tiny random LM, fixed nodes, a scripted LLM.

The tiny model and tokenizer come from ``attribot_rag.testing`` (built offline, random weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from attribot_rag.decisions import DecisionRule
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

QUESTION = "Who built the Eiffel Tower?"
ANSWER = "Gustave Eiffel built the tower in 1889. Paris is in France."
CONDENSED = "Who built the Eiffel Tower in Paris?"
TEXTS = {
    "paris": ("Paris is the capital of France. Berlin is in Germany.", {"title": "Capitals"}),
    "tower": ("The Eiffel Tower was built in 1889. Gustave Eiffel built it. The dog is lazy.", {"title": "Tower"}),
    "fox": ("The quick brown fox jumps over the lazy dog.", {"title": "Fox"}),
}

# A random model's context never supports its answer, so the default rule uses and cites nothing.
# Tests of the leave-one-out mechanics pass this rule: leave-one-out alone decides (no support or
# sufficiency check, no noise floor), every scored node counts as used unless ``min_score`` says
# otherwise, and every positively scoring sentence is cited (``min_citation=0``).
LOO_RULE = DecisionRule(min_lift=None, min_sufficiency=None, noise_factor=0, min_loo=-1e9, min_share=None,
                        min_citation=0.0)


@pytest.fixture
def loo_rule() -> DecisionRule:
    """:data:`LOO_RULE` (test modules are not importable under ``--import-mode=importlib``)."""
    return LOO_RULE


@pytest.fixture(scope="session")
def tiny():
    """The tiny model as an attribot LoadedModel."""
    from attribot_rag.testing import tiny_loaded_model

    return tiny_loaded_model()


@pytest.fixture(scope="session")
def attributor(tiny):
    """An attributor over the tiny model with the default ('auto' = hierarchical) strategy."""
    from attribot_rag import Attributor

    return Attributor(tiny)


def make_nodes() -> list[NodeWithScore]:
    """Three retrieved text nodes with fixed ids and retrieval scores 0.9, 0.8, 0.7."""
    return [
        NodeWithScore(node=TextNode(id_=nid, text=text, metadata=dict(meta)), score=0.9 - 0.1 * i)
        for i, (nid, (text, meta)) in enumerate(TEXTS.items())
    ]


@pytest.fixture
def nodes() -> list[NodeWithScore]:
    return make_nodes()


class ScriptedLLM(CustomLLM):
    """Answers every QA prompt with ``answer`` (and condense prompts with ``condensed``); streams word by word."""

    answer: str = Field(default=ANSWER)
    condensed: str = Field(default=CONDENSED)
    _prompts: list[str] = PrivateAttr(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=4096, num_output=64, model_name="scripted")

    @property
    def prompts(self) -> list[str]:
        return self._prompts

    def _reply(self, prompt: str) -> str:
        self._prompts.append(prompt)
        return self.condensed if "standalone question" in prompt else self.answer

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._reply(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        words = self._reply(prompt).split(" ")

        def gen() -> CompletionResponseGen:
            text = ""
            for i, word in enumerate(words):
                delta = word if i == 0 else " " + word
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()


class FixedRetriever(BaseRetriever):
    """Returns the same node objects every time (as a docstore-backed retriever does)."""

    def __init__(self, nodes: Sequence[NodeWithScore]) -> None:
        super().__init__()
        self._nodes = list(nodes)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=n.node, score=n.score) for n in self._nodes]


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM()


@pytest.fixture
def retriever(nodes) -> FixedRetriever:
    return FixedRetriever(nodes)


@pytest.fixture
def question() -> str:
    return QUESTION


@pytest.fixture
def answer() -> str:
    return ANSWER


@pytest.fixture
def condensed() -> str:
    return CONDENSED


@pytest.fixture
def make_llm():
    """Builds a ScriptedLLM (keyword args override its answers)."""
    return ScriptedLLM


@pytest.fixture
def make_retriever():
    """Builds a FixedRetriever over the given nodes."""
    return FixedRetriever
