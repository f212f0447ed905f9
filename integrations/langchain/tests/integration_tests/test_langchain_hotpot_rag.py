"""A real LCEL RAG chain, offline: InMemoryVectorStore over all-MiniLM-L6-v2, SmolLM2-135M answering
(ChatAttribot), AttribotCitations citing, on HotpotQA dev examples.

Kept small for CI on 2 CPU cores (3 retrieved documents, the hierarchical strategy keeping the top
document); the rate over many examples, with the default settings, is measured by
``benchmarks/hotpot_chain.py``.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest
from attribot_rag import Strategy
from langchain_core.messages import AIMessage

from langchain_attribot import AttribotCallbackHandler, AttribotCitations, ChatAttribot

from .conftest import DTYPE, MODEL

pytestmark = pytest.mark.slow

K = 3
CHEAP = Strategy(level="hierarchical", keep_top_k=1, name="hierarchical-top1")


@pytest.fixture(scope="module")
def parts():
    llm = ChatAttribot(model=MODEL, dtype=DTYPE, max_new_tokens=32)
    step = AttribotCitations(MODEL, dtype=DTYPE, strategy=CHEAP)
    handler = AttribotCallbackHandler(MODEL, dtype=DTYPE, strategy=CHEAP)
    return llm, step, handler


def _check_citations(out, row):
    retrieved = {d.id: d for d in out["context"]}
    assert len(retrieved) == K and set(retrieved) <= {d.id for d in row["documents"]}
    assert out["citations"], "the answer should rely on some retrieved sentence"
    for c in out["citations"]:
        doc = retrieved[c["document_id"]]
        assert doc.page_content[c["start"]:c["end"]] == c["sentence"]
        assert c["metadata"]["title"] == c["document_id"] and c["score"] > 0
    return out["citations"][0]["document_id"] in row["gold"]


def test_real_chain_invoke_with_message_answer_and_callback(hotpot_chain, hotpot_rows, embeddings, parts):
    """Example 0 through ``invoke``: the answer stays an AIMessage; the handler sees the same run."""
    llm, step, handler = parts
    row = hotpot_rows[0]
    # no StrOutputParser: the chat model's AIMessage is the answer, so an annotated copy comes back
    chain = hotpot_chain.build_chain(row["documents"], embeddings, llm, step, K, as_message=True)
    run_id = uuid.uuid4()
    out = chain.invoke(row["question"], config={"callbacks": [handler], "run_id": run_id})
    assert isinstance(out["answer"], AIMessage) and out["answer"].text.strip()
    hit = _check_citations(out, row)
    # the answer's annotations slice the answer text exactly
    cited = out["cited_answer"]
    text = out["answer"].text
    spans = {(s["start"], s["end"]): s["text"] for c in out["citations"] for s in c["answer_spans"]}
    anns = cited.content[0]["annotations"]
    assert anns and all(text[a["start_index"]:a["end_index"]] == spans[(a["start_index"], a["end_index"])]
                        for a in anns)
    assert cited.response_metadata["attribot"]["model"] == MODEL
    # the callback path: the same citations for the same run
    assert handler.get(run_id)["citations"] == out["citations"]
    assert hit, f"first citation {out['citations'][0]['document_id']!r} is not gold {row['gold']}"


def test_real_chain_streams_tokens_then_citations(hotpot_chain, hotpot_rows, embeddings, parts):
    """Example 1 through ``stream``: answer tokens arrive first, citations last; the handler agrees."""
    llm, step, handler = parts
    row = hotpot_rows[1]
    chain = hotpot_chain.build_chain(row["documents"], embeddings, llm, step, K)
    run_id = uuid.uuid4()
    chunks = list(chain.stream(row["question"], config={"callbacks": [handler], "run_id": run_id}))
    answer_at = [i for i, c in enumerate(chunks) if "answer" in c]
    assert len(answer_at) > 3 and "citations" in chunks[-1] and max(answer_at) < len(chunks) - 1
    out = chunks[0]
    for c in chunks[1:]:
        out = out + c
    assert isinstance(out["answer"], str) and out["answer"] == out["answer"].strip()
    hit = _check_citations(out, row)
    assert handler.get(run_id)["citations"] == out["citations"]
    assert handler.get(run_id)["question"] == row["question"]
    assert hit, f"first citation {out['citations'][0]['document_id']!r} is not gold {row['gold']}"


def test_benchmark_rows_record_paragraph_indices_not_titles(hotpot_chain, hotpot_rows):
    """The committed benchmark JSON holds paragraph indices: HotpotQA titles stay in ../shared/data."""
    row = hotpot_rows[0]
    docs = row["documents"]
    gold_doc = next(d for d in docs if d.id in row["gold"])
    other = next(d for d in docs if d.id not in row["gold"])
    out = {"answer": "x", "context": [other, gold_doc], "used_context": [gold_doc],
           "citations": [{"document_id": gold_doc.id, "sentence_index": 0, "score": 1.5}]}
    rec = hotpot_chain.score_row(row, out)
    position = {d.id: i for i, d in enumerate(docs)}
    assert rec["retrieved"] == [position[other.id], position[gold_doc.id]]
    assert rec["gold"] == sorted(position[t] for t in row["gold"])
    assert rec["first_citation"] == {"document": position[gold_doc.id], "sentence_index": 0, "score": 1.5}
    assert rec["used_context"] == [position[gold_doc.id]] and rec["hit"] and rec["chance"] == 0.5
    assert "answer" not in rec and rec["answer_sha256"] == hashlib.sha256(b"x").hexdigest()  # the text quotes the data
