"""Fixtures for the LlamaIndex integration tests: a tiny random LM, fixed nodes, a scripted LLM.

The tiny model and tokenizer are built offline (copied from the core test helpers, which this
suite does not import so that it runs on its own).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Answer the question using the documents below. Question: Document [1] Title",
    "Berlin is in Germany. The Eiffel Tower was built in 1889 by Gustave Eiffel.",
]
QUESTION = "Who built the Eiffel Tower?"
ANSWER = "Gustave Eiffel built the tower in 1889. Paris is in France."
CONDENSED = "Who built the Eiffel Tower in Paris?"
TEXTS = {
    "paris": ("Paris is the capital of France. Berlin is in Germany.", {"title": "Capitals"}),
    "tower": ("The Eiffel Tower was built in 1889. Gustave Eiffel built it. The dog is lazy.", {"title": "Tower"}),
    "fox": ("The quick brown fox jumps over the lazy dog.", {"title": "Fox"}),
}


@functools.cache
def tiny_tokenizer():
    """A byte-level BPE tokenizer with a ChatML template, trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(vocab_size: int, seed: int = 0):
    """A 2-layer randomly initialised Llama in fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    )
    return LlamaForCausalLM(cfg).eval().float()


@pytest.fixture(scope="session")
def tiny():
    """The tiny model as an attribot LoadedModel."""
    from attribot_rag import LoadedModel

    tok = tiny_tokenizer()
    return LoadedModel(name="tiny", model=tiny_model(len(tok)), tokenizer=tok)


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
