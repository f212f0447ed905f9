"""Shared helpers for the benchmark scripts: read HotpotQA / SQuAD examples from any path."""

from __future__ import annotations

import json
from pathlib import Path

from attribot_rag import Source

DEFAULT_HOTPOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hotpotqa" / "dev.jsonl"


def hotpot_examples(path: str | Path = DEFAULT_HOTPOT, n: int | None = None, offset: int = 0) -> list[dict]:
    """HotpotQA rows as ``{id, question, answer, sources, gold_titles, gold_sentences}``.

    ``sources`` keep HotpotQA's own sentence split; ``gold_sentences`` are (doc, sentence) pairs.
    """
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    rows = rows[offset : offset + n if n else None]
    out = []
    for r in rows:
        titles, sents = r["context"]["title"], r["context"]["sentences"]
        sources = [Source.from_sentences(t, s, {"title": t}) for t, s in zip(titles, sents)]
        gold = set(zip(r["supporting_facts"]["title"], r["supporting_facts"]["sent_id"]))
        gold_sentences = set()
        for d, (t, ss) in enumerate(zip(titles, sents)):
            # map HotpotQA sentence ids to our sentence indices (whitespace-only pieces are merged away)
            idx = 0
            for k, piece in enumerate(ss):
                if piece.strip():
                    if (t, k) in gold:
                        gold_sentences.add((d, idx))
                    idx += 1
        out.append({
            "id": r["id"], "question": r["question"], "answer": r["answer"], "sources": sources,
            "gold_titles": {t for t, _ in gold}, "gold_sentences": gold_sentences,
        })
    return out
