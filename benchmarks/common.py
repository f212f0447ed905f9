"""Shared helpers for the benchmark scripts: read HotpotQA / SQuAD examples from any path."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from attribot_rag import Source
from attribot_rag.spans import split_source

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_HOTPOT = DATA_ROOT / "hotpotqa" / "dev.jsonl"
DEFAULT_SQUAD = DATA_ROOT / "squad2" / "dev_articles.json"


def answer_digest(answer: str) -> str:
    """What result files keep of a generated answer: its SHA-256 (the text quotes the data)."""
    return hashlib.sha256(answer.encode("utf-8")).hexdigest()


def hotpot_examples(path: str | Path = DEFAULT_HOTPOT, n: int | None = None, offset: int = 0,
                    max_docs: int | None = None) -> list[dict]:
    """HotpotQA rows as ``{id, question, answer, type, sources, gold_titles, gold_sentences, gold_documents}``.

    ``sources`` keep HotpotQA's own sentence split; ``gold_sentences`` are (doc, sentence) pairs;
    ``gold_documents`` the indices of the supporting paragraphs. ``max_docs`` keeps the gold
    paragraphs and the first distractors, in their original order, up to that many paragraphs
    (``None``: all ten).
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
        if max_docs:
            gold_titles = set(r["supporting_facts"]["title"])
            room = max(max_docs - len(gold_titles), 0)
            keep = [t in gold_titles for t in titles]
            for i in range(len(titles)):
                if not keep[i] and room > 0:
                    keep[i], room = True, room - 1
            titles = [t for t, k in zip(titles, keep) if k]
            sents = [s for s, k in zip(sents, keep) if k]
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
            "id": r["id"], "question": r["question"], "answer": r["answer"], "type": r.get("type"),
            "sources": sources, "gold_titles": {t for t, _ in gold}, "gold_sentences": gold_sentences,
            "gold_documents": {d for d, t in enumerate(titles) if t in {g for g, _ in gold}},
        })
    return out


def squad_examples(
    path: str | Path = DEFAULT_SQUAD,
    n: int | None = None,
    offset: int = 0,
    passages: int | None = 10,
    seed: int = 0,
    include_unanswerable: bool = False,
) -> list[dict]:
    """SQuAD 2.0 questions as multi-passage examples: an article's paragraphs are the documents.

    Returns rows shaped like :func:`hotpot_examples`' (``gold_sentences`` is empty: SQuAD marks
    no supporting sentences); ``gold_documents`` holds the index of the question's own
    paragraph, the gold passage. Sources are split by attribot-rag's sentence splitter.

    Questions are taken round-robin over the articles (example ``i`` comes from article
    ``i % n_articles``), each article's questions in a seeded random order, so a small ``n``
    still spans many articles. ``passages`` caps the documents per example: the gold paragraph
    plus ``passages - 1`` other paragraphs of the same article, drawn and ordered at random
    (seeded per question); ``None`` or ``0`` keeps the whole article in its own order.
    Unanswerable questions (SQuAD 2.0's ``is_impossible``) are skipped unless
    ``include_unanswerable``.
    """
    with open(path) as f:
        articles = json.load(f)["data"]
    queues = []
    for a, art in enumerate(articles):
        qs = [
            (p, qa) for p, para in enumerate(art["paragraphs"]) for qa in para["qas"]
            if include_unanswerable or not qa.get("is_impossible", False)
        ]
        random.Random(f"{seed}:{a}").shuffle(qs)
        queues.append(qs)
    picked: list[tuple[int, int, dict]] = []
    need = offset + n if n else None
    depth = 0
    while need is None or len(picked) < need:
        added = False
        for a, qs in enumerate(queues):
            if depth < len(qs):
                picked.append((a, *qs[depth]))
                added = True
                if need is not None and len(picked) >= need:
                    break
        if not added:
            break
        depth += 1
    out = []
    for a, p, qa in picked[offset:]:
        art = articles[a]
        paras = art["paragraphs"]
        if passages:
            rng = random.Random(f"{seed}:{qa['id']}")
            others = [i for i in range(len(paras)) if i != p]
            chosen = [p, *rng.sample(others, min(passages - 1, len(others)))]
            rng.shuffle(chosen)
        else:
            chosen = list(range(len(paras)))
        title = art["title"].replace("_", " ")
        sources = [
            split_source(Source(id=f"{art['title']}#{i}", text=paras[i]["context"],
                                metadata={"article": title, "paragraph": i}))
            for i in chosen
        ]
        answers = [x["text"] for x in qa.get("answers", [])]
        out.append({
            "id": qa["id"], "question": qa["question"], "answer": answers[0] if answers else "",
            "answers": answers, "sources": sources, "gold_titles": set(), "gold_sentences": set(),
            "gold_documents": {chosen.index(p)}, "article": title,
        })
    return out


def detect_dataset(path: str | Path) -> str:
    """``"hotpotqa"`` for HotpotQA JSON lines, ``"squad"`` for a SQuAD-layout JSON file (``{"data": [...]}``)."""
    with open(path) as f:
        first = f.readline()
    try:
        row = json.loads(first)
    except json.JSONDecodeError:  # a pretty-printed file: look at its opening
        row = None
    if isinstance(row, dict) and "context" in row and "supporting_facts" in row:
        return "hotpotqa"
    if isinstance(row, dict) and "data" in row:
        return "squad"
    if row is None:
        with open(path) as f:
            if '"data"' in f.read(1 << 16):
                return "squad"
    raise ValueError(f"cannot tell the layout of {path}: pass --dataset hotpotqa or --dataset squad")


def load_examples(path: str | Path, dataset: str, n: int | None, offset: int = 0, hotpot_docs: int | None = None,
                  **squad_kw) -> list[dict]:
    """Examples of either layout, each tagged with its ``dataset``."""
    if dataset == "hotpotqa":
        rows = hotpot_examples(path, n, offset, max_docs=hotpot_docs)
    elif dataset == "squad":
        rows = squad_examples(path, n, offset, **squad_kw)
    else:
        raise ValueError(f"unknown dataset {dataset!r}: use 'hotpotqa' or 'squad'")
    for r in rows:
        r["dataset"] = dataset
    return rows


def write_results(out: str | Path, stem: str, summary: dict, markdown: str) -> None:
    """Print the table and write ``OUT/STEM.json`` and ``OUT/STEM.md`` (the folder is created)."""
    print(markdown)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    (out / f"{stem}.md").write_text(markdown + "\n")


def splice_block(text: str, start: str, end: str, block: str) -> str:
    """``text`` with what lies between the ``start`` and ``end`` markers replaced by ``block`` (the
    README blocks every benchmark generates); each marker must occur exactly once."""
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"README must hold exactly one {start} ... {end} block")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{block}\n{end}{tail}"


def write_block(readme: Path, markers: tuple[str, str], block: str) -> None:
    """Rewrite ``readme``'s block between ``markers`` with ``block``."""
    readme.write_text(splice_block(readme.read_text(), *markers, block))
