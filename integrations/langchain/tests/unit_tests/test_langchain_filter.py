"""The unused-document filter: the core's used-source rule, applied to LangChain Documents.

A random model's context never supports its answer, so the default rule keeps nothing; the
leave-one-out mechanics are tested under ``LOO_RULE`` (leave-one-out alone decides)."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage

from langchain_attribot import SCORE_KEY, SHARE_KEY, AttribotDocumentFilter, shared_attributor

from .conftest import ANSWER, LOO_RULE, QUESTION


def _core(lc_tiny, docs):
    att = shared_attributor(lc_tiny, strategy="documents")
    return att.attribute(QUESTION, [{"id": d.id, "text": d.page_content, "metadata": d.metadata} for d in docs], ANSWER)


@pytest.mark.parametrize("min_score,min_share", [(0.0, None), (0.01, None), (0.0, 0.25), (0.0, 0.5), (1e9, None)])
def test_filter_keeps_what_the_core_calls_used(lc_tiny, docs, min_score, min_share):
    kept = AttribotDocumentFilter(lc_tiny, min_score=min_score, min_share=min_share, rule=LOO_RULE).filter_documents(
        docs, QUESTION, ANSWER)
    core = _core(lc_tiny, docs)
    mask = core.used_mask(min_score=min_score, min_share=min_share, rule=LOO_RULE)
    assert [d.id for d in kept] == [d.id for d, m in zip(docs, mask) if m]
    shares = core.source_shares()
    for d in kept:
        i = next(i for i, x in enumerate(docs) if x.id == d.id)
        assert d.metadata[SCORE_KEY] == pytest.approx(core.document_scores[i].score)
        assert d.metadata[SHARE_KEY] == pytest.approx(shares[i])
        assert {k: v for k, v in d.metadata.items() if k not in (SCORE_KEY, SHARE_KEY)} == docs[i].metadata


def test_share_rule_keeps_fewer_documents(lc_tiny, docs):
    loose = AttribotDocumentFilter(lc_tiny, min_score=0.0, rule=LOO_RULE).filter_documents(docs, QUESTION, ANSWER)
    strict = AttribotDocumentFilter(lc_tiny, min_score=0.0, min_share=0.5, rule=LOO_RULE).filter_documents(
        docs, QUESTION, ANSWER)
    assert loose, "the tiny model scores some document positively"
    assert {d.id for d in strict} <= {d.id for d in loose} and len(strict) <= 1


def test_filter_as_a_runnable_sync_and_async(lc_tiny, values):
    f = AttribotDocumentFilter(lc_tiny, min_score=0.0, rule=LOO_RULE)
    direct = f.filter_documents(values["context"], QUESTION, AIMessage(ANSWER))
    assert direct
    assert [d.id for d in f.invoke(values)] == [d.id for d in direct]
    assert [d.id for d in asyncio.run(f.ainvoke(values))] == [d.id for d in direct]
    assert [d.id for d in asyncio.run(f.afilter_documents(values["context"], QUESTION, ANSWER))] == [
        d.id for d in direct]
    assert [[d.id for d in out] for out in f.batch([values, values])] == [[d.id for d in direct]] * 2


def test_filter_rejects_a_bad_share():
    with pytest.raises(ValueError, match="min_share"):
        AttribotDocumentFilter(min_share=1.5)


def test_bind_and_call_kwargs_override_options(lc_tiny, docs):
    from attribot_rag import ConfigError

    values = {"question": QUESTION, "context": docs, "answer": ANSWER}
    f = AttribotDocumentFilter(lc_tiny, min_score=1e9, rule=LOO_RULE)
    assert f.invoke(values) == []
    keep_all = f.bind(min_score=-1e9)
    assert [d.id for d in keep_all.invoke(values)] == [d.id for d in docs]
    assert [d.id for d in f.invoke(values, min_score=-1e9)] == [d.id for d in docs]
    assert [d.id for d in asyncio.run(keep_all.ainvoke(values))] == [d.id for d in docs]
    assert [len(x) for x in keep_all.batch([values, values])] == [len(docs)] * 2
    share_rule = AttribotDocumentFilter(lc_tiny, min_score=0.0, min_share=0.5, rule=LOO_RULE).invoke(values)
    assert f.bind(min_score=0.0, min_share=0.5).invoke(values) == share_rule
    assert f.invoke(values) == []  # per call only
    with pytest.warns(UserWarning, match=r"ignores the keyword argument\(s\) \['min_shar'\]"):
        assert f.bind(min_shar=0.5).invoke(values) == []
    with pytest.raises(ConfigError, match="share in"):
        f.bind(min_share=2.0).invoke(values)
