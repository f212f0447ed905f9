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


def test_async_generation_does_not_block_the_event_loop(local_llm):
    """acomplete/achat/astream_* run generation in worker threads: a ticker keeps ticking meanwhile."""
    import asyncio
    import threading

    model = local_llm.loaded.model
    real, threads = model.generate, set()

    def slow_generate(*args, **kwargs):
        threads.add(threading.get_ident())
        import time

        time.sleep(0.3)  # stands for a long generation
        return real(*args, **kwargs)

    text = local_llm.complete("Who built the tower?").text
    model.generate = slow_generate
    try:
        async def calls():
            done = await local_llm.acomplete("Who built the tower?")
            chat = await local_llm.achat([ChatMessage(role="user", content="Who built the tower?")])
            stream = [r async for r in await local_llm.astream_complete("Who built the tower?")]
            chat_stream = [r async for r in await local_llm.astream_chat(
                [ChatMessage(role="user", content="Who built the tower?")])]
            return done, chat, stream, chat_stream

        from attribot_rag.testing import with_ticker

        ticks, (done, chat, stream, chat_stream) = asyncio.run(with_ticker(calls, interval=0.01))
    finally:
        del model.generate  # the instance attribute shadowed the class method
    assert ticks >= 4 * 15  # four 0.3 s generations, a tick every 10 ms while each runs
    assert done.text == chat.message.content == stream[-1].text.strip() == text
    assert chat_stream[-1].message.content.strip() == text
    assert threading.main_thread().ident not in threads


def test_serialization_round_trip_keeps_the_model(local_llm, monkeypatch):
    import llama_index.postprocessor.attribot.llm as llm_module

    asked = []
    monkeypatch.setattr(llm_module, "shared_model",
                        lambda name, dtype=None, device=None: asked.append((name, device, dtype)) or local_llm.loaded)
    data = local_llm.to_dict()
    again = AttribotLLM.from_dict(data)
    assert asked == [(local_llm.model_name, None, None)]
    assert again.model_name == local_llm.model_name and again.max_new_tokens == local_llm.max_new_tokens


def test_closing_a_stream_early_stops_generation(tiny):
    """Breaking out of stream_complete stops the generation thread instead of running to max_new_tokens."""
    llm = AttribotLLM(tiny, max_new_tokens=200)
    model = tiny.model
    real, steps = model.forward, []

    def counting_forward(*args, **kwargs):
        steps.append(1)
        return real(*args, **kwargs)

    model.forward = counting_forward
    try:
        stream = llm.stream_complete("Who built the tower?")
        next(stream)
        stream.close()
        import time

        seen, deadline = -1, time.monotonic() + 20
        while len(steps) != seen and time.monotonic() < deadline:  # until the generation thread goes quiet
            seen = len(steps)
            time.sleep(0.5)
    finally:
        del model.forward
    assert len(steps) < 50  # a few steps past the first chunk, not 200
