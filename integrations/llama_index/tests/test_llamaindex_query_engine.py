"""AttributedQueryEngine over a real RetrieverQueryEngine (scripted LLM, fixed retriever, tiny scorer)."""

import asyncio

import pytest
from llama_index.core.base.response.schema import PydanticResponse, Response
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.query_engine import CustomQueryEngine, RetrieverQueryEngine

from llama_index.postprocessor.attribot import (
    METADATA_KEY,
    RETRIEVAL_SCORE_KEY,
    AttribotNodePostprocessor,
    AttributedQueryEngine,
    EmptyAnswerError,
    NodeTextError,
    NoSourcesError,
)


def _engine(attributor, retriever, llm, streaming=False, **pp):
    inner = RetrieverQueryEngine.from_args(retriever, llm=llm, streaming=streaming)
    return AttributedQueryEngine(
        query_engine=inner, postprocessor=AttribotNodePostprocessor(attributor=attributor, **pp)
    )


def _summary(response):
    """What must agree between two paths (timing aside)."""
    meta = {k: v for k, v in response.metadata[METADATA_KEY].items() if k != "timing"}
    return (
        str(response),
        [(n.node.node_id, n.score, n.node.metadata[RETRIEVAL_SCORE_KEY]) for n in response.source_nodes],
        {k: v for k, v in response.metadata.items() if k != METADATA_KEY},
        meta,
    )


def test_query_reranks_and_merges_metadata(attributor, retriever, llm, nodes, question, answer, loo_rule):
    response = _engine(attributor, retriever, llm, rule=loo_rule).query(question)
    assert isinstance(response, Response) and response.response == answer
    scores = [n.score for n in response.source_nodes]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(nodes)
    meta = response.metadata
    # The synthesizer's {node_id: node metadata} entries are kept next to the attribution.
    for n in nodes:
        assert meta[n.node.node_id] == n.node.metadata
    entry = meta[METADATA_KEY]
    assert entry["question"] == question and entry["answer"] == answer
    assert [e["node_id"] for e in entry["nodes"]] == [n.node.node_id for n in response.source_nodes]
    assert entry["citations"] and all(c["node_id"] in {n.node.node_id for n in nodes} for c in entry["citations"])
    retrieval = {n.node.node_id: n.score for n in nodes}
    assert all(n.node.metadata[RETRIEVAL_SCORE_KEY] == retrieval[n.node.node_id] for n in response.source_nodes)


def test_async_equals_sync(attributor, retriever, llm, question, loo_rule):
    engine = _engine(attributor, retriever, llm, rule=loo_rule)
    sync = engine.query(question)
    asyn = asyncio.run(engine.aquery(question))
    assert _summary(asyn) == _summary(sync)


def test_streaming_is_consumed_then_attributed(attributor, retriever, make_llm, question, loo_rule):
    plain = _engine(attributor, retriever, make_llm(), rule=loo_rule).query(question)
    assert plain.metadata[METADATA_KEY]["citations"]  # else the comparison below would prove little
    streamed = _engine(attributor, retriever, make_llm(), streaming=True, rule=loo_rule).query(question)
    astreamed = asyncio.run(_engine(attributor, retriever, make_llm(), streaming=True, rule=loo_rule).aquery(question))
    assert type(streamed) is Response and type(astreamed) is Response
    assert _summary(streamed) == _summary(plain) == _summary(astreamed)


def test_filtering_in_the_engine(attributor, retriever, llm, question, loo_rule):
    full = _engine(attributor, retriever, llm).query(question)
    threshold = sorted(n.score for n in full.source_nodes)[0] + 1e-6  # the lowest node falls under it
    filtered = _engine(attributor, retriever, llm, filter_unused=True, min_score=threshold, rule=loo_rule).query(
        question)
    assert [n.node.node_id for n in filtered.source_nodes] == [n.node.node_id for n in full.source_nodes[:-1]]
    assert [e["kept"] for e in filtered.metadata[METADATA_KEY]["nodes"]] == [True, True, False]


def test_prompts_pass_through(attributor, retriever, llm):
    prompts = _engine(attributor, retriever, llm).get_prompts()
    assert any(k.startswith("query_engine:") for k in prompts)


class _Fixed(CustomQueryEngine):
    """A query engine returning a fixed response."""

    response: object

    def custom_query(self, query_str: str):
        return self.response


def _wrap(attributor, response):
    return AttributedQueryEngine(
        query_engine=_Fixed(response=response), postprocessor=AttribotNodePostprocessor(attributor=attributor)
    )


def test_turns_without_nodes_or_answer_come_back_unattributed_and_say_why(
    attributor, nodes, make_llm, make_retriever, question, caplog
):
    """The plain engine answers these; the wrapper returns that answer, marked skipped, never raises."""
    for response, why in ((Response("An answer.", source_nodes=[]), "no source nodes"),
                          *((Response(empty, source_nodes=nodes), "no answer text") for empty in (None, "", "  "))):
        out = _wrap(attributor, response).query(question)
        meta = out.metadata[METADATA_KEY]
        assert out.response == response.response and why in meta["skipped"]
        assert meta["citations"] == [] and meta["nodes"] == []
        assert [n.node.node_id for n in out.source_nodes] == [n.node.node_id for n in response.source_nodes]
    assert "left unattributed" in caplog.text
    out = _engine(attributor, make_retriever([]), make_llm()).query(question)  # a retriever that finds nothing
    assert "no source nodes" in out.metadata[METADATA_KEY]["skipped"] and out.source_nodes == []
    out = asyncio.run(_engine(attributor, make_retriever(nodes), make_llm(answer=" ")).aquery(question))
    assert "no answer text" in out.metadata[METADATA_KEY]["skipped"]
    # the postprocessor called directly still rejects them with typed errors
    pp = AttribotNodePostprocessor(attributor=attributor)
    with pytest.raises(NoSourcesError, match="no source nodes"):
        pp.attribute_nodes([], question, "An answer.")
    with pytest.raises(EmptyAnswerError):
        pp.attribute_nodes(nodes, question, " ")


def test_bad_nodes_give_clear_errors(attributor, nodes, question):
    from llama_index.core.schema import NodeWithScore, TextNode

    blank = NodeWithScore(node=TextNode(id_="blank", text=""), score=0.3)
    with pytest.raises(NodeTextError, match="blank"):
        _wrap(attributor, Response("An answer.", source_nodes=[*nodes, blank])).query(question)


def test_pydantic_response_is_attributed_as_json(attributor, nodes, question):
    class Answer(BaseModel):
        name: str

    out = _wrap(attributor, PydanticResponse(Answer(name="Gustave Eiffel"), source_nodes=nodes, metadata={"k": 1}))
    response = out.query(question)
    assert isinstance(response, PydanticResponse) and response.response.name == "Gustave Eiffel"
    assert response.metadata["k"] == 1
    assert response.metadata[METADATA_KEY]["answer"] == '{"name":"Gustave Eiffel"}'


def test_default_wrapper_loads_nothing_until_queried(attributor, retriever, llm):
    inner = RetrieverQueryEngine.from_args(retriever, llm=llm)
    engine = AttributedQueryEngine(query_engine=inner)
    assert engine.postprocessor.attributor is None and engine.postprocessor.target == "smollm2-135m"
    configured = AttributedQueryEngine.from_defaults(inner, attributor=attributor, top_n=2)
    assert configured.postprocessor.top_n == 2 and configured.postprocessor.attributor is attributor
    with pytest.raises(ValueError, match="either"):
        AttributedQueryEngine.from_defaults(inner, AttribotNodePostprocessor(), top_n=2)


def test_as_a_pre_generation_postprocessor_it_says_why_it_cannot_run(attributor, retriever, llm, question):
    pp = AttribotNodePostprocessor(attributor=attributor)
    inner = RetrieverQueryEngine.from_args(retriever, llm=llm, node_postprocessors=[pp])
    with pytest.raises(EmptyAnswerError, match="after generation"):
        inner.query(question)


def test_engine_responses_carry_the_cores_verdicts(attributor, retriever, llm, question, answer):
    """By default the engine decides by the core's DEFAULT_RULE: the tiny model's context does not
    support the answer, so a filtering engine returns no source node and no citation."""
    from attribot_rag.decisions import DEFAULT_RULE

    engine = AttributedQueryEngine.from_defaults(RetrieverQueryEngine.from_args(retriever, llm=llm),
                                                 attributor=attributor, filter_unused=True)
    assert engine.postprocessor.resolved_rule() is DEFAULT_RULE
    response = engine.query(question)
    assert response.response == answer and response.source_nodes == []
    entry = response.metadata[METADATA_KEY]
    assert entry["supported"] is False and entry["citations"] == [] and entry["noise"] > 0
    assert [s["text"] for s in entry["answer_sentences"]] == [
        "Gustave Eiffel built the tower in 1889.", "Paris is in France."]
    assert all(set(s) >= {"text", "start", "end", "supported", "score"} and s["supported"] is False
               for s in entry["answer_sentences"])
