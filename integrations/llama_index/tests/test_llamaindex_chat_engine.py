"""AttributedChatEngine over ContextChatEngine and CondensePlusContextChatEngine."""

import asyncio

import pytest
from attribot_rag import ConfigError
from llama_index.core.chat_engine import CondensePlusContextChatEngine, ContextChatEngine
from llama_index.core.chat_engine.types import AgentChatResponse, StreamingAgentChatResponse

from llama_index.postprocessor.attribot import (
    METADATA_KEY,
    RETRIEVAL_SCORE_KEY,
    AttribotNodePostprocessor,
    AttributedChatEngine,
    AttributedChatResponse,
)

ENGINES = {"context": ContextChatEngine, "condense_plus_context": CondensePlusContextChatEngine}


def _chat_engine(kind, attributor, retriever, llm, rerank=False, **pp):
    inner = ENGINES[kind].from_defaults(retriever=retriever, llm=llm)
    return AttributedChatEngine(inner, AttribotNodePostprocessor(attributor=attributor, **pp), rerank=rerank)


def _check(response, nodes, answer, rerank=False):
    assert str(response) == answer
    meta = response.metadata[METADATA_KEY]
    assert meta["answer"] == answer and meta["citations"]
    retrieval = {n.node.node_id: n.score for n in nodes}
    if rerank:
        scores = [n.score for n in response.source_nodes]
        assert scores == sorted(scores, reverse=True) and len(scores) == len(nodes)
        assert all(n.node.metadata[RETRIEVAL_SCORE_KEY] == retrieval[n.node.node_id] for n in response.source_nodes)
    else:  # the retriever's order and scores
        assert [(n.node.node_id, n.score) for n in response.source_nodes] == [(n.node.node_id, n.score) for n in nodes]
    used = [e["node_id"] for e in meta["nodes"] if e["used"]]
    assert used and [n.node.node_id for n in response.cited_nodes] == used
    assert all(n.score == retrieval[n.node.node_id] for n in response.cited_nodes)
    return meta


@pytest.mark.parametrize("rerank", [False, True])
@pytest.mark.parametrize("kind", list(ENGINES))
def test_chat_citations(kind, attributor, retriever, llm, nodes, question, answer, loo_rule, rerank):
    engine = _chat_engine(kind, attributor, retriever, llm, rerank=rerank, rule=loo_rule)
    response = engine.chat(question)
    assert isinstance(response, AttributedChatResponse) and isinstance(response, AgentChatResponse)
    meta = _check(response, nodes, answer, rerank)
    assert meta["question"] == question  # first turn: nothing to condense
    assert [m.content for m in engine.chat_history] == [question, answer]
    engine.reset()  # a second turn would be condensed into another question
    asyn = asyncio.run(engine.achat(question))
    assert asyn.metadata[METADATA_KEY]["question"] == question
    assert [(n.node.node_id, n.score) for n in asyn.source_nodes] == [
        (n.node.node_id, n.score) for n in response.source_nodes
    ]


def test_condensed_question_is_attributed_with(attributor, retriever, llm, nodes, question, answer, condensed,
                                              loo_rule):
    engine = _chat_engine("condense_plus_context", attributor, retriever, llm, rule=loo_rule)
    engine.chat(question)
    follow_up = engine.chat("And when?")
    meta = _check(follow_up, nodes, answer)
    assert meta["question"] == condensed  # the standalone question the engine retrieved with
    plain = AttributedChatEngine.from_defaults(engine.chat_engine, use_retrieval_question=False, attributor=attributor)
    assert plain.chat("And when?").metadata[METADATA_KEY]["question"] == "And when?"


@pytest.mark.parametrize("kind", list(ENGINES))
def test_stream_chat_consumes_then_attributes(kind, attributor, retriever, make_llm, nodes, question, answer,
                                             loo_rule):
    reference = _chat_engine(kind, attributor, retriever, make_llm(), rule=loo_rule).chat(question)
    engine = _chat_engine(kind, attributor, retriever, make_llm(), rule=loo_rule)
    streamed = engine.stream_chat(question)
    assert isinstance(streamed, StreamingAgentChatResponse)
    assert "".join(streamed.response_gen) == answer
    _check(streamed, nodes, answer)
    assert [m.content for m in engine.chat_history] == [question, answer]
    assert [(n.node.node_id, n.score) for n in streamed.source_nodes] == [
        (n.node.node_id, n.score) for n in reference.source_nodes
    ]

    async def astream():
        engine.reset()
        response = await engine.astream_chat(question)
        return response, "".join([t async for t in response.async_response_gen()])

    aresponse, text = asyncio.run(astream())
    assert text == answer
    _check(aresponse, nodes, answer)
    assert [m.content for m in engine.chat_history] == [question, answer]


def test_chat_without_nodes_returns_the_turn_unattributed(attributor, make_retriever, llm, question):
    """The engine already wrote the turn to memory: the caller must get its answer, marked skipped."""
    engine = _chat_engine("context", attributor, make_retriever([]), llm)
    response = engine.chat(question)
    meta = response.metadata[METADATA_KEY]
    assert "no source nodes" in meta["skipped"] and meta["citations"] == [] and response.source_nodes == []
    assert [m.content for m in engine.chat_history] == [question, response.response]
    streamed = asyncio.run(engine.astream_chat(question))
    assert "no source nodes" in streamed.metadata[METADATA_KEY]["skipped"]


@pytest.mark.parametrize("kind", list(ENGINES))
def test_second_turn_is_scored_in_its_conversation(kind, attributor, retriever, llm, nodes, question, answer):
    engine = _chat_engine(kind, attributor, retriever, llm, rerank=True)
    engine.chat(question)
    follow_up = engine.chat("And when?")
    meta = follow_up.metadata[METADATA_KEY]
    history = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    pp = engine.postprocessor
    with_history = pp.attribute_nodes(nodes, meta["question"], answer, history)
    without = pp.attribute_nodes(nodes, meta["question"], answer)
    got = [(n.node.node_id, n.score) for n in follow_up.source_nodes]
    assert got == [(n.node.node_id, n.score) for n in with_history.nodes]
    assert got != [(n.node.node_id, n.score) for n in without.nodes]
    # history_messages=0: the turn is scored alone
    alone = AttributedChatEngine(engine.chat_engine, pp, history_messages=0, rerank=True)
    engine.reset()
    alone.chat(question)
    second = alone.chat("And when?")
    assert second.metadata[METADATA_KEY]["question"] == meta["question"]
    assert [(n.node.node_id, n.score) for n in second.source_nodes] == [
        (n.node.node_id, n.score) for n in without.nodes
    ]
    for bad in (-1, True, "4"):  # True was silently one message
        with pytest.raises(ConfigError, match="history_messages"):
            AttributedChatEngine(engine.chat_engine, pp, history_messages=bad)
