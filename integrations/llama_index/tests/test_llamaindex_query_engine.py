"""AttributedQueryEngine over a real RetrieverQueryEngine (scripted LLM, fixed retriever, tiny scorer)."""

import asyncio

import pytest
from llama_index.core.base.response.schema import PydanticResponse, Response, StreamingResponse
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.query_engine import CustomQueryEngine, RetrieverQueryEngine

from llama_index.postprocessor.attribot import (
    ATTRIBUTION_SCORE_KEY,
    METADATA_KEY,
    RETRIEVAL_SCORE_KEY,
    AttribotNodePostprocessor,
    AttributedAsyncStreamingResponse,
    AttributedQueryEngine,
    AttributedResponse,
    AttributedStreamingResponse,
    EmptyAnswerError,
    NodeTextError,
    NoSourcesError,
)


def _engine(attributor, retriever, llm, streaming=False, rerank=False, **pp):
    inner = RetrieverQueryEngine.from_args(retriever, llm=llm, streaming=streaming)
    return AttributedQueryEngine(
        query_engine=inner, postprocessor=AttribotNodePostprocessor(attributor=attributor, **pp), rerank=rerank
    )


def _summary(response):
    """What must agree between two paths (timing aside)."""
    meta = {k: v for k, v in response.metadata[METADATA_KEY].items() if k != "timing"}
    return (
        str(response),
        [(n.node.node_id, n.score, dict(n.node.metadata)) for n in response.source_nodes],
        [(n.node.node_id, n.score, dict(n.node.metadata)) for n in response.cited_nodes],
        {k: v for k, v in response.metadata.items() if k != METADATA_KEY},
        meta,
    )


def test_source_nodes_stay_the_retrievers_and_cited_nodes_come_beside_them(
    attributor, retriever, llm, nodes, question, answer, loo_rule
):
    response = _engine(attributor, retriever, llm, rule=loo_rule).query(question)
    assert isinstance(response, AttributedResponse) and isinstance(response, Response)
    assert response.response == answer
    # source_nodes: the retriever's order, scores and metadata, untouched
    assert [(n.node.node_id, n.score, n.node.metadata) for n in response.source_nodes] == [
        (n.node.node_id, n.score, n.node.metadata) for n in nodes]
    meta = response.metadata
    for n in nodes:  # the synthesizer's {node_id: node metadata} entries are kept next to the attribution
        assert meta[n.node.node_id] == n.node.metadata
    entry = meta[METADATA_KEY]
    assert entry["question"] == question and entry["answer"] == answer
    # cited_nodes: the used nodes, most relied-on first, with the retriever's score; attribution in metadata
    used = [e for e in entry["nodes"] if e["used"]]
    assert used and [n.node.node_id for n in response.cited_nodes] == [e["node_id"] for e in used]
    retrieval = {n.node.node_id: n.score for n in nodes}
    for cited, e in zip(response.cited_nodes, used):
        assert cited.score == retrieval[cited.node.node_id] == cited.node.metadata[RETRIEVAL_SCORE_KEY]
        assert cited.node.metadata[ATTRIBUTION_SCORE_KEY] == e["attribution_score"]
        assert ATTRIBUTION_SCORE_KEY in cited.node.excluded_llm_metadata_keys
    assert entry["citations"] and all(c["node_id"] in {n.node.node_id for n in nodes} for c in entry["citations"])


def test_rerank_makes_source_nodes_the_attribution_ranking(attributor, retriever, llm, nodes, question, loo_rule):
    response = _engine(attributor, retriever, llm, rerank=True, rule=loo_rule).query(question)
    scores = [n.score for n in response.source_nodes]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(nodes)
    entry = response.metadata[METADATA_KEY]
    assert [e["node_id"] for e in entry["nodes"]] == [n.node.node_id for n in response.source_nodes]
    assert scores == [e["attribution_score"] for e in entry["nodes"]]
    retrieval = {n.node.node_id: n.score for n in nodes}
    assert all(n.node.metadata[RETRIEVAL_SCORE_KEY] == retrieval[n.node.node_id] for n in response.source_nodes)
    assert all(n.score == retrieval[n.node.node_id] for n in response.cited_nodes)  # cited: the retriever's
    built = AttributedQueryEngine.from_defaults(RetrieverQueryEngine.from_args(retriever, llm=llm), rerank=True,
                                                attributor=attributor, rule=loo_rule)
    assert built.rerank and _summary(built.query(question)) == _summary(response)


def test_async_equals_sync(attributor, retriever, llm, question, loo_rule):
    for rerank in (False, True):
        engine = _engine(attributor, retriever, llm, rerank=rerank, rule=loo_rule)
        sync = engine.query(question)
        asyn = asyncio.run(engine.aquery(question))
        assert _summary(asyn) == _summary(sync)


class _Events:
    """Collects the instrumentation events fired while it is open."""

    def __enter__(self):
        from llama_index.core.instrumentation import get_dispatcher
        from llama_index.core.instrumentation.event_handlers import BaseEventHandler

        seen = self.seen = []

        class Collect(BaseEventHandler):
            def handle(self, event, **kwargs):
                seen.append(type(event).__name__)

        self.handler, self.root = Collect(), get_dispatcher()
        self.root.add_event_handler(self.handler)
        return self

    def __exit__(self, *exc):
        self.root.event_handlers.remove(self.handler)


@pytest.mark.parametrize("rerank", [False, True])
def test_a_streaming_engine_yields_tokens_then_citations(attributor, retriever, make_llm, question, answer,
                                                         loo_rule, rerank):
    plain = _engine(attributor, retriever, make_llm(), rerank=rerank, rule=loo_rule).query(question)
    assert plain.metadata[METADATA_KEY]["citations"] and plain.cited_nodes  # else the comparison proves little
    words = answer.split(" ")
    expected = [w if i == 0 else " " + w for i, w in enumerate(words)]
    with _Events() as events:
        streamed = _engine(attributor, retriever, make_llm(), streaming=True, rerank=rerank, rule=loo_rule).query(
            question)
        assert isinstance(streamed, AttributedStreamingResponse) and isinstance(streamed, StreamingResponse)
        tokens = []
        for token in streamed.response_gen:
            # while tokens flow there is no attribution yet: it needs the whole answer
            assert METADATA_KEY not in streamed.metadata and streamed.cited_nodes == []
            assert "ReRankEndEvent" not in events.seen
            tokens.append(token)
        assert tokens == expected  # the tokens came through untouched, one by one
        assert events.seen.count("ReRankStartEvent") == events.seen.count("ReRankEndEvent") == 1
    assert _summary(streamed) == _summary(plain)  # citations, cited and source nodes arrived on the response
    finished = streamed.get_response()
    assert isinstance(finished, AttributedResponse) and _summary(finished) == _summary(plain)


def test_an_async_streaming_engine_yields_tokens_then_citations(attributor, retriever, make_llm, question, answer,
                                                                loo_rule):
    plain = _engine(attributor, retriever, make_llm(), rule=loo_rule).query(question)
    engine = _engine(attributor, retriever, make_llm(), streaming=True, rule=loo_rule)

    async def run():
        streamed = await engine.aquery(question)
        tokens = []
        async for token in streamed.async_response_gen():
            assert METADATA_KEY not in streamed.metadata
            tokens.append(token)
        return streamed, tokens

    streamed, tokens = asyncio.run(run())
    assert isinstance(streamed, (AttributedAsyncStreamingResponse, AttributedStreamingResponse))
    assert "".join(tokens) == answer and len(tokens) == len(answer.split(" "))
    assert _summary(streamed) == _summary(plain)
    # str() of a stream consumes it (LlamaIndex's convention); attribution runs at its end too
    again = _engine(attributor, retriever, make_llm(), streaming=True, rule=loo_rule).query(question)
    assert str(again) == answer and _summary(again) == _summary(plain)


def test_filtering_in_the_engine(attributor, retriever, llm, nodes, question, loo_rule):
    full = _engine(attributor, retriever, llm, rerank=True).query(question)
    threshold = sorted(n.score for n in full.source_nodes)[0] + 1e-6  # the lowest node falls under it
    kw = dict(filter_unused=True, min_score=threshold, rule=loo_rule)
    filtered = _engine(attributor, retriever, llm, rerank=True, **kw).query(question)
    assert [n.node.node_id for n in filtered.source_nodes] == [n.node.node_id for n in full.source_nodes[:-1]]
    assert [e["kept"] for e in filtered.metadata[METADATA_KEY]["nodes"]] == [True, True, False]
    # without re-ranking the same two nodes stay, in retrieval order, with their retrieval scores
    kept = _engine(attributor, retriever, llm, **kw).query(question)
    order = [n.node.node_id for n in nodes]
    assert [(n.node.node_id, n.score) for n in kept.source_nodes] == sorted(
        ((n.node.node_id, n.score) for n in nodes if n.node.node_id != full.source_nodes[-1].node.node_id),
        key=lambda x: order.index(x[0]))
    assert [n.node.node_id for n in kept.cited_nodes] == [n.node.node_id for n in full.source_nodes[:-1]]


def test_the_wrapped_engines_own_qa_prompt_is_the_one_scored(tiny, retriever, llm, nodes, question, answer,
                                                             monkeypatch):
    """No attributor given: the scorer renders the engine's text_qa_template, exactly as the LLM got it."""
    from attribot_rag import Attributor
    from llama_index.core.prompts import PromptTemplate as LlamaPromptTemplate

    from llama_index.postprocessor.attribot import llamaindex_qa_template

    qa = LlamaPromptTemplate("Notes:\n{context_str}\n---\nAsked: {query_str}\nReply: ")
    inner = RetrieverQueryEngine.from_args(retriever, llm=llm, text_qa_template=qa)
    engine = AttributedQueryEngine.from_defaults(inner, target=tiny)
    used = []
    attribute = Attributor.attribute
    monkeypatch.setattr(Attributor, "attribute", lambda self, *a, **k: used.append(self.template)
                        or attribute(self, *a, **k))
    response = engine.query(question)
    assert response.response == answer and len(llm.prompts) == 1
    template = engine.scoring_template()
    assert used == [template] and template.user == "Notes:\n{documents}\n---\nAsked: {question}\nReply: "
    assert template != llamaindex_qa_template()
    # the rendered scoring prompt is the prompt the LLM was sent (metadata headers included)
    sources = engine.postprocessor.attribute_nodes(nodes, question, answer, template=template).result.sources
    scored = template.user_turn(question, sources, [s.text for s in sources])
    assert scored == llm.prompts[0] and "title: Capitals" in scored
    # update_prompts is followed at the next query
    inner.update_prompts({"response_synthesizer:text_qa_template": LlamaPromptTemplate(
        "{context_str}\n\nQ: {query_str}\nA: ")})
    engine.query(question)
    assert used[-1].user == "{documents}\n\nQ: {question}\nA: " != template.user
    # a given template or attributor wins over the engine's prompt
    assert AttributedQueryEngine.from_defaults(inner, target=tiny, template=template).scoring_template() is template


def test_an_unmirrorable_engine_prompt_fails_when_the_wrapper_is_built(retriever, llm, attributor):
    from attribot_rag import ConfigError
    from llama_index.core.prompts import RichPromptTemplate

    inner = RetrieverQueryEngine.from_args(retriever, llm=llm,
                                           text_qa_template=RichPromptTemplate("{{ context_str }} {{ query_str }}"))
    with pytest.raises((ConfigError, ValueError), match="text_qa_template"):
        AttributedQueryEngine.from_defaults(inner)
    AttributedQueryEngine.from_defaults(inner, attributor=attributor)  # it brings its own template


def test_title_headers_and_source_labels_are_scored_but_never_cited(attributor, retriever, llm, nodes, question,
                                                                    loo_rule):
    """CitationQueryEngine's nodes read "title: ...\n\nSource N:\n<chunk>" to the LLM; no citation holds either."""
    from llama_index.core.query_engine import CitationQueryEngine

    every = loo_rule.with_options(min_citation=-1e9)  # cite every scored sentence, whatever its sign
    inner = CitationQueryEngine(retriever=retriever, llm=llm)
    pp = AttribotNodePostprocessor(attributor=attributor, rule=every, citation_top_k=None)
    response = AttributedQueryEngine(query_engine=inner, postprocessor=pp).query(question)
    sent = llm.prompts[0]
    assert "Source 1:\n" in sent and "title: Capitals" in sent  # what the LLM saw
    citations = response.metadata[METADATA_KEY]["citations"]
    assert len(citations) >= len(nodes)
    for c in citations:
        assert "Source" not in c["sentence"] and "title:" not in c["sentence"]
        node = next(n.node for n in response.source_nodes if n.node.node_id == c["node_id"])
        assert node.text.startswith("Source ") and node.text[c["start"]:c["end"]] == c["sentence"]
    # the scorer saw the labels and headers: the mirrored prompt renders what the LLM got
    template = AttributedQueryEngine(query_engine=inner, postprocessor=pp).engine_template()
    sources = pp.attribute_nodes(response.source_nodes, question, str(response), template=template).result.sources
    assert all(s.prefix.endswith(f"Source {i + 1}:\n") and "Source" not in s.text for i, s in enumerate(sources))
    assert template.user_turn(question, sources, [s.text for s in sources]) == sent
    # with the default metadata mode on a plain engine, the title header is never a citation either
    plain = _engine(attributor, retriever, llm, rule=every, citation_top_k=None).query(question)
    assert plain.metadata[METADATA_KEY]["citations"]
    assert not any("title:" in c["sentence"] for c in plain.metadata[METADATA_KEY]["citations"])


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
