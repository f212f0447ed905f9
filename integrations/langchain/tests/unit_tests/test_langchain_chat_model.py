"""The local chat model on the tiny random model: invoke, stream, stop strings, shared weights."""

from __future__ import annotations

import asyncio

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_attribot import AttribotCitations, ChatAttribot


def _sum(chunks):
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return total


def test_invoke_and_stream_agree(lc_tiny):
    llm = ChatAttribot(model=lc_tiny, max_new_tokens=12)
    messages = [SystemMessage("Be brief."), HumanMessage("Who built the Eiffel Tower?")]
    msg = llm.invoke(messages)
    assert isinstance(msg, AIMessage) and msg.usage_metadata["input_tokens"] > 0
    assert 0 < msg.usage_metadata["output_tokens"] <= 12
    chunks = list(llm.stream(messages))
    streamed = _sum(chunks)
    assert streamed.text == msg.text
    assert streamed.usage_metadata == msg.usage_metadata
    assert asyncio.run(llm.ainvoke(messages)).text == msg.text


def test_stop_strings(lc_tiny):
    llm = ChatAttribot(model=lc_tiny, max_new_tokens=24)
    full = llm.invoke("Who built the Eiffel Tower?").text
    assert len(full) > 4
    stop = full[3:5]
    cut = llm.invoke("Who built the Eiffel Tower?", stop=[stop]).text
    assert cut == full[: full.index(stop)]
    assert _sum(list(llm.stream("Who built the Eiffel Tower?", stop=[stop]))).text == cut


def test_chat_model_and_citations_share_the_weights(lc_tiny):
    from langchain_attribot import shared_model

    assert shared_model(lc_tiny) is lc_tiny
    assert ChatAttribot(model=lc_tiny)._loaded() is AttribotCitations(lc_tiny).attributor.target.loaded
