"""The citation Runnable on a tiny random model: shapes, faithfulness to the core, messages, batching,
streaming, async and model sharing."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from attribot_rag import Attributor
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableParallel, RunnablePassthrough

from langchain_attribot import SCORE_KEY, SHARE_KEY, AttribotCitations, shared_attributor, shared_model

from .conftest import ANSWER, LOO_RULE, QUESTION


def _step(lc_tiny, **kw) -> AttribotCitations:
    kw.setdefault("top_k", None)
    kw.setdefault("rule", LOO_RULE)  # leave-one-out mechanics: the default rule cites nothing on a random model
    return AttribotCitations(lc_tiny, **kw)


def _core(att, docs, answer=ANSWER):
    """The core's own result for the same inputs (metadata included: the title is in the prompt)."""
    return att.attribute(QUESTION, [{"id": d.id, "text": d.page_content, "metadata": d.metadata} for d in docs], answer)


def _sum(chunks):
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return total


def _comparable(out: dict) -> dict:
    """Everything in a step's output but timings (which differ run to run)."""
    res = {k: v for k, v in out.items() if k != "cited_answer"}
    if "attribot" in out:
        res["attribot"] = {**out["attribot"], "seconds": None}
    if "cited_answer" in out:
        msg = out["cited_answer"]
        meta = {**msg.response_metadata, "attribot": {**msg.response_metadata["attribot"], "seconds": None}}
        res["cited_answer"] = (type(msg), msg.content, meta)
    return res


def test_invoke_adds_json_ready_citations_that_match_the_core(lc_tiny, lc_attributor, values, docs):
    step = _step(lc_tiny)
    out = step.invoke(values)
    assert step.attributor is lc_attributor  # resolved through the shared cache
    assert {k: out[k] for k in values} == values
    assert set(out) == {*values, "citations", "used_context", "attribot"}
    cites = out["citations"]
    json.dumps(cites)  # JSON-serialisable as is
    assert cites, "the tiny model scores some sentence positively"
    core = _core(lc_attributor, docs)
    expected = core.decisions(LOO_RULE).citations  # the rule's citations: only documents it calls used
    assert {c.source_id for c in expected} <= {s.id for s, u in zip(core.sources, core.decisions(LOO_RULE).used) if u}
    assert [(c["document_id"], c["sentence_index"]) for c in cites] == [(c.source_id, c.sentence_index)
                                                                         for c in expected]
    assert [c["score"] for c in cites] == pytest.approx([c.score for c in expected])
    assert [c["rank"] for c in cites] == list(range(1, len(cites) + 1))
    by_id = {d.id: d for d in docs}
    for c in cites:
        doc = by_id[c["document_id"]]
        assert docs[c["source_index"]] is doc
        assert doc.page_content[c["start"]:c["end"]] == c["sentence"]
        assert c["metadata"] == doc.metadata
        assert 0 <= c["share"] <= 1 and c["scored_by"] == "tiny"
        assert [s["index"] for s in c["answer_spans"]] == c["answer_sentences"]
        for span in c["answer_spans"]:
            assert ANSWER[span["start"]:span["end"]] == span["text"]


def test_used_context_follows_the_core_rule(lc_tiny, lc_attributor, values, docs):
    for min_score, min_share in ((0.0, None), (0.02, None), (0.0, 0.3), (1e9, None)):
        out = _step(lc_tiny, used_min_score=min_score, used_min_share=min_share).invoke(values)
        core = _core(lc_attributor, docs)
        mask = core.used_mask(min_score=min_score, min_share=min_share, rule=LOO_RULE)
        used = out["used_context"]
        assert [d.id for d in used] == [d.id for d, m in zip(docs, mask) if m]
        for d in used:
            assert d.metadata[SCORE_KEY] > min_score and SHARE_KEY in d.metadata
            assert d.page_content == next(x.page_content for x in docs if x.id == d.id)
    assert all(SCORE_KEY not in d.metadata for d in docs)  # the originals are untouched


def test_top_k_and_min_score(lc_tiny, values):
    everything = _step(lc_tiny).invoke(values)["citations"]
    assert len(_step(lc_tiny, top_k=2).invoke(values)["citations"]) == min(2, len(everything))
    cut = everything[0]["score"] - 1e-9
    assert [c["rank"] for c in _step(lc_tiny, min_score=cut).invoke(values)["citations"]] == [1]


def test_aimessage_answer_gets_citation_annotations(lc_tiny, values):
    msg = AIMessage(content=ANSWER, id="run-1", response_metadata={"model_name": "api-model"})
    out = _step(lc_tiny).invoke({**values, "answer": msg})
    cited = out["cited_answer"]
    assert out["answer"] is msg and msg.content == ANSWER  # the original is not modified
    assert isinstance(cited, AIMessage) and cited.id == "run-1" and cited.text == ANSWER
    assert cited.response_metadata["model_name"] == "api-model"
    summary = cited.response_metadata["attribot"]
    assert summary == out["attribot"]
    json.dumps(summary, allow_nan=False)
    assert summary["model"] == "tiny" and [d["id"] for d in summary["documents"]] == ["capitals", "tower", "fox"]
    [block] = cited.content
    assert block["type"] == "text" and block["text"] == ANSWER
    anns = block["annotations"]
    pairs = {(c["rank"], j) for c in out["citations"] for j in c["answer_sentences"]}
    assert len(anns) == len(pairs) > 0
    by_rank = {c["rank"]: c for c in out["citations"]}
    for a in anns:
        c = by_rank[a["extras"]["attribot_rank"]]
        assert a["type"] == "citation" and a["cited_text"] == c["sentence"]
        span = next(s for s in c["answer_spans"] if s["start"] == a["start_index"])
        # the offsets slice the cited answer sentence exactly
        assert ANSWER[a["start_index"]:a["end_index"]] == cited.text[a["start_index"]:a["end_index"]] == span["text"]
        assert a["extras"]["document_id"] == c["document_id"] and a["extras"]["attribot_score"] == c["score"]
        meta = c["metadata"]
        assert a.get("title") == meta.get("title")
        assert a.get("url") == (meta.get("url") or meta.get("source"))
    assert [(a["start_index"], a["extras"]["attribot_rank"]) for a in anns] == sorted(
        (a["start_index"], a["extras"]["attribot_rank"]) for a in anns)
    # LangChain reads them back as standard citation blocks
    std = [a for b in cited.content_blocks if b["type"] == "text" for a in b.get("annotations", [])]
    assert len(std) == len(anns) and all(a["type"] == "citation" for a in std)


def test_list_content_annotations_index_their_own_block(lc_tiny, values):
    first, second = "Gustave Eiffel built the tower in 1889. ", "It stands in Paris, the capital of France."
    assert first + second == ANSWER
    msg = AIMessage(content=[
        {"type": "text", "text": first, "annotations": [{"type": "citation", "title": "provider"}]},
        {"type": "reasoning", "reasoning": "hmm"},
        second,
    ])
    out = _step(lc_tiny).invoke({**values, "answer": msg})
    blocks = out["cited_answer"].content
    assert [b["type"] for b in blocks] == ["text", "reasoning", "text"]
    assert blocks[0]["annotations"][0] == {"type": "citation", "title": "provider"}  # kept
    assert out["cited_answer"].text == ANSWER
    for block in (blocks[0], blocks[2]):
        for a in block.get("annotations", [])[block is blocks[0]:]:
            c = next(c for c in out["citations"] if c["rank"] == a["extras"]["attribot_rank"])
            assert block["text"][a["start_index"]:a["end_index"]] in {s["text"] for s in c["answer_spans"]}
    assert len(blocks[0]["annotations"]) > 1 or len(blocks[2].get("annotations", [])) > 0


def test_streamed_message_chunk_answer_gives_a_message(lc_tiny, values):
    chunk = AIMessageChunk(content=ANSWER[:10]) + AIMessageChunk(content=ANSWER[10:])
    out = _step(lc_tiny).invoke({**values, "answer": chunk})
    assert type(out["cited_answer"]) is AIMessage and out["cited_answer"].text == ANSWER


def test_other_input_keys_and_explicit_keys(lc_tiny, docs):
    auto = _step(lc_tiny).invoke({"input": QUESTION, "documents": docs, "output": ANSWER})
    named = _step(lc_tiny, question_key="q", documents_key="ctx", answer_key="a",
                  citations_key="sources").invoke({"q": QUESTION, "ctx": docs, "a": ANSWER, "input": "ignored"})
    assert auto["citations"] == named["sources"]


def test_batch_and_abatch_match_invoke(lc_tiny, values, docs):
    step = _step(lc_tiny)
    inputs = [values, {**values, "answer": AIMessage(ANSWER)}, {**values, "context": docs[::-1]},
              {**values, "question": "Where is the tower?", "answer": "In Paris."}]
    expected = [_comparable(step.invoke(x)) for x in inputs]
    assert [_comparable(o) for o in step.batch(inputs, config={"max_concurrency": 4})] == expected
    assert [_comparable(o) for o in asyncio.run(step.abatch(inputs))] == expected
    assert _comparable(asyncio.run(step.ainvoke(inputs[1]))) == expected[1]


def test_stream_passes_input_through_then_yields_citations(lc_tiny, values):
    step = _step(lc_tiny)
    chunks = list(step.stream(values))
    assert chunks[0] == values and set(chunks[-1]) == {"citations", "used_context", "attribot"}
    assert _comparable(_sum(chunks)) == _comparable(step.invoke(values))

    async def collect():
        return [c async for c in step.astream(values)]

    assert _comparable(_sum(asyncio.run(collect()))) == _comparable(step.invoke(values))
    single = list(_step(lc_tiny, stream_input=False).stream(values))
    assert len(single) == 1 and _comparable(single[0]) == _comparable(step.invoke(values))


def test_streaming_an_lcel_chain_streams_answer_tokens_before_citations(lc_tiny, retriever, prompt, fake_llm):
    step = _step(lc_tiny)
    chain = (
        RunnableParallel(context=retriever, question=RunnablePassthrough())
        | RunnablePassthrough.assign(answer=prompt | fake_llm | StrOutputParser())
        | step
    )
    chunks = list(chain.stream(QUESTION))
    answer_chunks = [i for i, c in enumerate(chunks) if "answer" in c]
    citation_chunks = [i for i, c in enumerate(chunks) if "citations" in c]
    assert len(answer_chunks) > 3 and citation_chunks == [len(chunks) - 1] and max(answer_chunks) < citation_chunks[0]
    streamed = _sum(chunks)
    invoked = chain.invoke(QUESTION)
    assert streamed["answer"] == invoked["answer"] == ANSWER
    assert _comparable(streamed) == _comparable(invoked)

    async def collect():
        return [c async for c in chain.astream(QUESTION)]

    assert _comparable(_sum(asyncio.run(collect()))) == _comparable(invoked)


def test_message_answer_through_a_chain_and_pick(lc_tiny, retriever, prompt, fake_llm):
    step = _step(lc_tiny)
    chain = (
        RunnableParallel(context=retriever, question=RunnablePassthrough())
        | RunnablePassthrough.assign(answer=prompt | fake_llm)
        | RunnablePassthrough.assign(citations=step.pick("citations"))
    )
    out = chain.invoke(QUESTION)
    assert isinstance(out["answer"], AIMessage) and "used_context" not in out
    assert out["citations"] == step.invoke(out)["citations"]
    streamed = _sum(list((RunnablePassthrough.assign(answer=prompt | fake_llm) | step).stream(
        {"question": QUESTION, "context": out["context"]})))
    assert isinstance(streamed["cited_answer"], AIMessage) and streamed["cited_answer"].text == ANSWER


def test_ainvoke_does_not_block_the_event_loop(lc_tiny, values):
    class SlowAttributor(Attributor):
        def attribute(self, *args, **kwargs):
            time.sleep(0.4)  # stands in for a long CPU-bound attribution
            return super().attribute(*args, **kwargs)

    step = AttribotCitations(attributor=SlowAttributor(lc_tiny), top_k=None, rule=LOO_RULE)

    async def main():
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        outs = await step.abatch([values, values])
        done = True
        await task
        return ticks, outs

    ticks, outs = asyncio.run(main())
    assert ticks >= 20, ticks  # the loop kept running through ~0.8 s of model work
    assert outs[0]["citations"] == outs[1]["citations"] == step.invoke(values)["citations"]


def test_model_is_loaded_once_and_shared(monkeypatch, lc_tiny):
    import attribot_rag.models as core_models

    import langchain_attribot._models as models

    calls = []

    def fake_load(name, *, device=None, dtype=None):
        calls.append(name)
        time.sleep(0.2)  # a slow load: every thread arrives while it runs
        return lc_tiny

    monkeypatch.setattr(core_models, "load_model", fake_load)
    key = "not-a-real-model-name"
    results = []
    threads = [threading.Thread(target=lambda: results.append(shared_model(key, dtype="fp32"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [key] and all(r is lc_tiny for r in results)
    a = AttribotCitations(key, dtype="fp32").attributor
    assert a is AttribotCitations(key, dtype="fp32", top_k=1).attributor is shared_attributor(key, dtype="fp32")
    assert AttribotCitations(key, dtype="fp32", strategy="batched").attributor is not a
    assert calls == [key]
    core_models.clear_model_cache()  # the core's clear (LlamaIndex's too) drops LangChain's attributors
    assert shared_attributor(key, dtype="fp32") is not a and calls == [key, key]
    models.clear_cache()


def test_concurrent_threads_share_one_model_safely(lc_tiny, values, docs):
    step = _step(lc_tiny)
    inputs = [{**values, "context": docs[i:] + docs[:i]} for i in range(3)] * 3
    expected = [_comparable(step.invoke(x)) for x in inputs]
    got: dict[int, dict] = {}

    def work(i):
        got[i] = _comparable(step.invoke(inputs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(inputs))] == expected


def test_documents_may_take_their_id_from_metadata(lc_tiny, docs):
    no_ids = [Document(page_content=d.page_content, metadata={**d.metadata, "source_id": d.id}) for d in docs]
    out = _step(lc_tiny, id_key="source_id").invoke({"question": QUESTION, "context": no_ids, "answer": ANSWER})
    ref = _step(lc_tiny).invoke({"question": QUESTION, "context": docs, "answer": ANSWER})
    assert [c["document_id"] for c in out["citations"]] == [c["document_id"] for c in ref["citations"]]


def test_chat_history_is_scored_as_context(lc_tiny, lc_attributor, values, docs):
    from langchain_core.messages import HumanMessage, SystemMessage

    history = [SystemMessage("be brief"), HumanMessage("Tell me about Paris."), AIMessage("It is in France.")]
    turns = [{"role": "user", "content": "Tell me about Paris."}, {"role": "assistant", "content": "It is in France."}]
    sources = [{"id": d.id, "text": d.page_content, "metadata": d.metadata} for d in docs]
    expected = lc_attributor.attribute(QUESTION, sources, ANSWER, history=turns).decisions(LOO_RULE).citations
    plain = _step(lc_tiny).invoke(values)["citations"]
    for step, vals in [(_step(lc_tiny), {**values, "chat_history": history}),
                       (_step(lc_tiny, history_key="msgs"), {**values, "msgs": history})]:
        cites = step.invoke(vals)["citations"]
        assert [c["score"] for c in cites] == pytest.approx([c.score for c in expected])
        assert [c["score"] for c in cites] != pytest.approx([c["score"] for c in plain])
    # history_messages=0 ignores it; a wrong key or shape is a clear error
    assert _step(lc_tiny, history_messages=0).invoke({**values, "chat_history": history})["citations"] == plain
    from langchain_attribot import ChainInputError

    with pytest.raises(ChainInputError, match="no 'msgs' key"):
        _step(lc_tiny, history_key="msgs").invoke(values)
    with pytest.raises(ChainInputError, match="must be a list of messages"):
        _step(lc_tiny).invoke({**values, "chat_history": "hi"})
    with pytest.raises(ValueError, match="history_messages"):
        _step(lc_tiny, history_messages=-2)


def test_documents_the_core_drops_to_fit_the_window_keep_their_own_scores():
    """overflow='drop_lowest_score' drops a middle document: scores must stay with their documents."""
    from attribot_rag.testing import tiny_loaded_model

    small = tiny_loaded_model()
    small.model.config.max_position_embeddings = 200  # a window the three documents overflow
    att = Attributor(small, strategy="exact", overflow="drop_lowest_score")
    docs = [Document(id="a", page_content="Paris is the capital of France. It is big.", metadata={"score": 0.9}),
            Document(id="b", page_content="The quick brown fox jumps over the lazy dog. " * 12,
                     metadata={"score": 0.1}),
            Document(id="c", page_content="Berlin is in Germany. Rome is in Italy.", metadata={"score": 0.5})]
    every = LOO_RULE.with_options(min_loo=-1e9, min_citation=-1e9)  # every scored document and sentence
    cited = AttribotCitations(attributor=att, rule=every, min_score=-1e9, top_k=None).cite(
        {"question": "Capital of France?", "context": docs, "answer": "Paris."})
    core = cited.result
    assert [s.id for s in core.dropped_sources] == ["b"]
    by_id = {s.id: d.score for s, d in zip(core.sources, core.document_scores)}
    assert [(d.id, d.metadata[SCORE_KEY]) for d in cited.used_context] == [("a", by_id["a"]), ("c", by_id["c"])]
    assert cited.citations and all(docs[c["source_index"]].id == c["document_id"] for c in cited.citations)
    assert {c["document_id"] for c in cited.citations} == {"a", "c"}
    summary = cited.summary
    assert [(d["index"], d["id"]) for d in summary["documents"]] == [(0, "a"), (2, "c")]
    assert summary["dropped_document_ids"] == ["b"]


def test_numpy_metadata_stays_numeric(lc_tiny, values, docs):
    """Vector stores return np.float32 scores: citations keep them numbers (and JSON-ready)."""
    import numpy as np

    docs = [d.model_copy(update={"metadata": {**d.metadata, "score": np.float32(0.5), "page": np.int64(3),
                                              "bad": np.float64("nan"), "vec": np.arange(2),
                                              "day": np.datetime64("2024-01-02"), "z": np.complex128(1j)}})
            for d in docs]
    cites = _step(lc_tiny).invoke({**values, "context": docs})["citations"]
    assert cites
    meta = cites[0]["metadata"]
    assert type(meta["score"]) is float and meta["score"] == 0.5 and type(meta["page"]) is int and meta["page"] == 3
    assert meta["bad"] is None and meta["vec"] == [0, 1]  # as the core's to_json writes them
    assert meta["day"] == "2024-01-02" and meta["z"] == "1j"  # .tolist() gives a date / complex: JSON holds str
    json.dumps(cites, allow_nan=False)


def test_bind_and_call_kwargs_override_options(lc_tiny, values):
    from attribot_rag import ConfigError

    step = AttribotCitations(lc_tiny, top_k=5, rule=LOO_RULE)
    full = step.invoke(values)
    assert len(full["citations"]) >= 2 and full["used_context"]  # else the overrides below would prove nothing
    unused = step.bind(used_min_score=1e9).invoke(values)  # no document used: nothing is cited either
    assert unused["used_context"] == [] and unused["citations"] == []
    assert step.invoke(values, used_min_score=1e9)["used_context"] == []
    bound = step.bind(top_k=1)
    one = bound.invoke(values)
    assert one["citations"] == full["citations"][:1] and one["used_context"] == full["used_context"]
    assert step.invoke(values, top_k=1)["citations"] == one["citations"]
    assert asyncio.run(bound.ainvoke(values))["citations"] == one["citations"]
    assert [o["citations"] for o in bound.batch([values, values])] == [one["citations"]] * 2
    assert [o["citations"] for o in asyncio.run(bound.abatch([values]))] == [one["citations"]]
    assert _sum(list(bound.stream(values)))["citations"] == one["citations"]

    async def astream():
        return [c async for c in bound.astream(values)]

    assert _sum(asyncio.run(astream()))["citations"] == one["citations"]
    assert step.options.top_k == 5 and step.invoke(values)["citations"] == full["citations"]  # per call only
    with pytest.warns(UserWarning, match=r"AttribotCitations ignores the keyword argument\(s\) \['topk'\]"):
        assert step.bind(topk=1).invoke(values)["citations"] == full["citations"]
    with pytest.raises(ConfigError, match="top_k=-1"):
        step.bind(top_k=-1).invoke(values)


def test_every_component_decides_by_the_cores_default_rule(lc_tiny):
    """No integration-specific thresholds: left alone, the rule in force *is* the core's DEFAULT_RULE."""
    from dataclasses import replace

    from attribot_rag.decisions import DEFAULT_RULE

    from langchain_attribot import AttribotCallbackHandler, AttribotDocumentFilter, CiteOptions

    assert CiteOptions().resolved_rule() is DEFAULT_RULE
    for component in (AttribotCitations(lc_tiny), AttribotCallbackHandler(lc_tiny), AttribotDocumentFilter(lc_tiny)):
        assert component.options.resolved_rule() is DEFAULT_RULE
    # the used_* options (the filter's min_score / min_share) override the rule's fields, None disables
    assert CiteOptions(used_min_score=0.3, used_min_share=None).resolved_rule() == replace(
        DEFAULT_RULE, min_loo=0.3, min_share=None)
    share = AttribotDocumentFilter(lc_tiny, min_share=0.2).options.resolved_rule()
    assert share == replace(DEFAULT_RULE, min_share=0.2)
    assert CiteOptions(rule=LOO_RULE).resolved_rule() is LOO_RULE
    assert CiteOptions(rule=LOO_RULE, used_min_score=1.0).resolved_rule() == replace(LOO_RULE, min_loo=1.0)


def test_an_unsupported_answer_gets_no_citations(lc_tiny, lc_attributor, values, docs):
    """A random model's context does not support the answer: no citations, annotations or used documents."""
    from langchain_attribot import AttribotDocumentFilter

    msg = AIMessage(content=ANSWER)
    core = _core(lc_attributor, docs)
    assert core.decisions().supported is False
    # under a rule that ignores support the same inputs are cited: the empty lists below come from the verdict
    loo = AttribotCitations(lc_tiny, top_k=None, rule=LOO_RULE).invoke({**values, "answer": msg})
    assert loo["citations"] and loo["used_context"] and loo["cited_answer"].content[0].get("annotations")

    step = AttribotCitations(lc_tiny, top_k=None)
    out = step.invoke({**values, "answer": msg})
    assert out["citations"] == [] and out["used_context"] == []
    [block] = out["cited_answer"].content
    assert block["text"] == ANSWER and "annotations" not in block
    assert not [a for b in out["cited_answer"].content_blocks for a in b.get("annotations", [])]
    summary = out["cited_answer"].response_metadata["attribot"]
    assert summary == out["attribot"]
    assert summary["supported"] is False and summary["citations"] == 0 and summary["used_document_ids"] == []
    assert not any(d["used"] for d in summary["documents"])
    assert step.cite(values).result.marked_answer() == ANSWER  # no [n] markers either
    # a per-call min_score cannot bring citations back: it only cuts further
    assert step.invoke(values, min_score=-1e9)["citations"] == []
    assert AttribotDocumentFilter(lc_tiny).invoke(values) == []
    assert AttribotDocumentFilter(lc_tiny, min_score=-1e9, min_share=None).invoke(values) == []


def test_the_handler_cites_nothing_for_an_unsupported_answer(lc_tiny, retriever, prompt, fake_llm):
    from langchain_attribot import AttribotCallbackHandler

    chain = RunnableParallel(context=retriever, question=RunnablePassthrough()) | prompt | fake_llm
    handler = AttribotCallbackHandler(lc_tiny, top_k=None, raise_error=True)
    chain.invoke(QUESTION, config={"callbacks": [handler]})
    record = handler.latest
    assert record["citations"] == [] and record["used_context"] == [] and record["summary"]["supported"] is False
    assert "annotations" not in record["cited_answer"].content[0]


def test_summary_reports_support_answer_sentences_and_noise(lc_tiny, lc_attributor, values, docs):
    out = _step(lc_tiny, rule=None).invoke({**values, "answer": AIMessage(ANSWER)})
    summary = out["cited_answer"].response_metadata["attribot"]
    json.dumps(summary, allow_nan=False)
    verdicts = _core(lc_attributor, docs).decisions()
    assert summary["supported"] is verdicts.supported is False
    assert summary["noise"] == pytest.approx(verdicts.noise) and summary["noise"] > 0
    sentences = summary["answer_sentences"]
    assert len(sentences) == 2
    for s, v in zip(sentences, verdicts.answer_sentences):
        assert {"text", "start", "end", "supported", "score"} <= set(s)
        assert ANSWER[s["start"]:s["end"]] == s["text"] == v.text
        assert s["supported"] is v.supported and s["score"] == pytest.approx(v.score)
    assert [d["used"] for d in summary["documents"]] == verdicts.used
    # a rule that checks no support reports None, and per-call ``rule`` replaces the constructor's
    unchecked = _step(lc_tiny, rule=None).invoke(values, rule=LOO_RULE)["attribot"]
    assert unchecked["supported"] is None and all(s["supported"] is None for s in unchecked["answer_sentences"])
