"""The local chat model on the tiny random model: invoke, stream, stop strings, shared weights, standard
parameters (max_tokens, dtype, tracing params)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from attribot_rag import ConfigError
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_attribot import AttribotCitations, ChatAttribot

from .conftest import QUESTION


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


def test_max_tokens_is_an_alias_of_max_new_tokens(lc_tiny):
    assert ChatAttribot(model=lc_tiny, max_tokens=7).max_new_tokens == 7
    assert ChatAttribot(model=lc_tiny, max_new_tokens=7).max_new_tokens == 7
    assert ChatAttribot(model=lc_tiny, max_tokens=7, max_new_tokens=7).max_new_tokens == 7
    with pytest.raises(ConfigError, match="one setting under two names"):
        ChatAttribot(model=lc_tiny, max_tokens=7, max_new_tokens=8)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        ChatAttribot(model=lc_tiny, max_tokens=0)


def test_per_call_max_tokens_is_honoured(lc_tiny):
    llm = ChatAttribot(model=lc_tiny, max_new_tokens=24)
    assert llm.invoke(QUESTION).usage_metadata["output_tokens"] > 3  # else the cut below would prove nothing
    for bound in (llm.bind(max_tokens=3), llm.bind(max_new_tokens=3), ChatAttribot(model=lc_tiny, max_tokens=3)):
        assert bound.invoke(QUESTION).usage_metadata["output_tokens"] == 3
        assert _sum(list(bound.stream(QUESTION))).usage_metadata["output_tokens"] == 3
    with pytest.raises(ConfigError, match="one setting under two names"):
        llm.invoke(QUESTION, max_tokens=3, max_new_tokens=4)
    with pytest.raises(ConfigError, match="int >= 1"):
        llm.invoke(QUESTION, max_tokens=-1)


def test_dtype_may_be_a_torch_dtype(fake_loads, lc_tiny):
    llm = ChatAttribot(model="chat-dtype-test", dtype=torch.float32)
    assert llm.dtype is torch.float32 and llm._identifying_params["dtype"] == "float32"
    loaded = llm._loaded()
    assert [dtype for _, _, dtype in fake_loads] == [torch.float32]
    assert ChatAttribot(model="chat-dtype-test", dtype="fp32")._loaded() is loaded  # one load, one key
    with pytest.raises(ConfigError, match="unknown dtype .fp33.: pass a torch.dtype or one of fp32"):
        ChatAttribot(model="chat-dtype-test", dtype="fp33")
    with pytest.raises(ConfigError, match="device= and dtype= apply to models loaded by name"):
        ChatAttribot(model=lc_tiny, dtype=torch.float32)


def test_langsmith_params_name_the_model(lc_tiny):
    llm = ChatAttribot(model=lc_tiny, max_tokens=10)
    assert llm._get_ls_params(stop=["\n"]) == {
        "ls_provider": "attribot", "ls_model_name": "tiny", "ls_model_type": "chat", "ls_max_tokens": 10,
        "ls_stop": ["\n"],
    }
    per_call = llm._get_ls_params(model="smollm2-135m", max_tokens=3)
    assert per_call["ls_model_name"] == "smollm2-135m" and per_call["ls_max_tokens"] == 3
    assert ChatAttribot()._get_ls_params()["ls_model_name"] == "smollm2-135m"  # builds nothing, loads nothing
