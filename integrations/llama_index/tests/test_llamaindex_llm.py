"""AttribotLLM (the offline local LLM) on the tiny model, and a whole pipeline with it."""

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.embeddings import MockEmbedding

from llama_index.postprocessor.attribot import (
    METADATA_KEY,
    AttribotLLM,
    AttribotNodePostprocessor,
    AttributedQueryEngine,
)


@pytest.fixture(scope="module")
def local_llm(tiny):
    return AttribotLLM(tiny, max_new_tokens=12)


def test_complete_stream_and_chat_agree(local_llm):
    assert local_llm.metadata.is_chat_model and local_llm.metadata.context_window == 2048
    text = local_llm.complete("Who built the tower?").text
    streamed = list(local_llm.stream_complete("Who built the tower?"))
    assert streamed and streamed[-1].text.strip() == text
    assert "".join(r.delta for r in streamed).strip() == text
    chat = local_llm.chat([ChatMessage(role="user", content="Who built the tower?")])
    assert chat.message.content == text  # one user turn renders exactly like complete()


def test_prompt_uses_the_chat_template(local_llm):
    rendered = local_llm.completion_to_prompt("Hi")
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    turns = [ChatMessage(role="system", content="S"), ChatMessage(role="user", content="Q")]
    system = local_llm.messages_to_prompt(turns)
    assert system.startswith("<|im_start|>system\nS<|im_end|>")


def test_too_long_a_prompt_is_a_clear_error(tiny):
    small = AttribotLLM(tiny, max_new_tokens=8, context_window=16)
    with pytest.raises(ValueError, match="context window"):
        small.complete("word " * 50)


def test_whole_pipeline_with_the_local_llm(tiny, attributor):
    docs = [
        Document(text="Paris is the capital of France. Berlin is in Germany.", metadata={"title": "Capitals"}),
        Document(text="The Eiffel Tower was built in 1889. Gustave Eiffel built it.", metadata={"title": "Tower"}),
    ]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    llm = AttribotLLM(tiny, max_new_tokens=12)
    engine = AttributedQueryEngine(
        query_engine=index.as_query_engine(llm=llm, similarity_top_k=2),
        postprocessor=AttribotNodePostprocessor(attributor=attributor),
    )
    response = engine.query("Who built the tower?")
    assert response.response and len(response.source_nodes) == 2
    assert response.metadata[METADATA_KEY]["answer"] == response.response
