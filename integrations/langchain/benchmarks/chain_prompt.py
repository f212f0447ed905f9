"""Does scoring under the chain's own prompt change which document is cited? HotpotQA dev, paired.

For each dev example, its paragraphs (the gold ones and the first distractors, ``--max-docs`` in
all, in HotpotQA's order; ``benchmarks/common.py``'s ``hotpot_examples``) are the chain's
documents. A LangChain chat prompt that puts them in the *system* message (as the package README's
chain does) and the question in a human message is filled with ``ChainPrompt.format_documents``,
and the local chat model (``ChatAttribot``) answers. The same answer is then cited twice:

* ``chain``: ``AttribotCitations(prompt=PROMPT)``, scored under the chain's own messages;
* ``fixed``: ``AttribotCitations()``, scored under attribot-rag's fixed template (documents,
  instruction and question in one user turn).

Per arm it records the first citation under the core's ``DEFAULT_RULE`` (none when the rule
finds the answer unsupported) and the top document by leave-one-out score (the rule aside), and
whether each is a gold supporting paragraph. Chance is the gold share of the documents.

    python integrations/langchain/benchmarks/chain_prompt.py --n 50

Resumable: the result file (``results/chain_prompt_<model>_d<max-docs>.json``) is rewritten
after every example, and a rerun with the same settings skips the examples already in it. The
data is read from ``../shared/data/hotpotqa/dev.jsonl`` (never copied: records hold paragraph
indices and the answer's SHA-256, not text).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if str(ROOT) not in sys.path:  # the repository's benchmarks/ package (hotpot_examples)
    sys.path.insert(0, str(ROOT))

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using the documents below. Answer in one short sentence.\n\n{documents}"),
    ("human", "{question}"),
])
DOCUMENT = "[{index}]{title}\n{text}"  # "[1] Title\ntext", as hotpot_chain.py formats documents


def _atomic_write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _arm(cited: Any, gold: set[int], index: dict[str, int]) -> dict[str, Any]:
    """One arm's record: the rule's first citation and the top leave-one-out document."""
    first = cited.citations[0] if cited.citations else None
    rows = cited.result.source_rows()
    top = min(rows, key=lambda r: r.rank) if rows else None
    return {
        "first_citation": None if first is None else {
            "document": index[first["document_id"]], "sentence_index": first["sentence_index"],
            "score": first["score"]},
        "hit": first is not None and index[first["document_id"]] in gold,
        "top_document": None if top is None else {"document": index[top.id], "score": top.score},
        "top_hit": top is not None and index[top.id] in gold,
        "supported": cited.summary["supported"],
        "used": [index[i] for i in cited.summary["used_document_ids"]],
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates per arm over the rows so far, and the paired disagreements."""
    n = len(rows)
    if not n:
        return {"examples": 0}
    out: dict[str, Any] = {"examples": n, "chance_rate": sum(r["chance"] for r in rows) / n}
    for arm in ("chain", "fixed"):
        out[arm] = {
            "first_citation_gold_rate": sum(r[arm]["hit"] for r in rows) / n,
            "no_citation": sum(r[arm]["first_citation"] is None for r in rows),
            "top_document_gold_rate": sum(r[arm]["top_hit"] for r in rows) / n,
            "supported": sum(bool(r[arm]["supported"]) for r in rows),
        }
    out["paired"] = {
        "top_document_differs": sum((r["chain"]["top_document"] or {}).get("document")
                                    != (r["fixed"]["top_document"] or {}).get("document") for r in rows),
        "top_hit_chain_only": sum(r["chain"]["top_hit"] and not r["fixed"]["top_hit"] for r in rows),
        "top_hit_fixed_only": sum(r["fixed"]["top_hit"] and not r["chain"]["top_hit"] for r in rows),
        "hit_chain_only": sum(r["chain"]["hit"] and not r["fixed"]["hit"] for r in rows),
        "hit_fixed_only": sum(r["fixed"]["hit"] and not r["chain"]["hit"] for r in rows),
    }
    return out


README = HERE.parent / "README.md"
MARKERS = ("<!-- chain-prompt:start -->", "<!-- chain-prompt:end -->")


def render(saved: dict[str, Any]) -> str:
    """The README block for a committed result file: one row per arm, from its summary."""
    s, st = saved["summary"], saved["settings"]
    n = s["examples"]
    lines = [f"{st['model']}, {n} HotpotQA dev questions, {st['max_docs']} paragraphs, the model's own answers "
             f"(strategy {st['strategy']}); chance {s['chance_rate']:.2f}.", "",
             "| scored under | first citation gold | no citation | top LOO document gold | supported |",
             "|---|---|---|---|---|"]
    for arm, label in (("chain", "the chain's own prompt (`prompt=`)"), ("fixed", "the fixed template")):
        a = s[arm]
        lines.append(f"| {label} | {a['first_citation_gold_rate']:.2f} | {a['no_citation']} of {n} | "
                     f"{a['top_document_gold_rate']:.2f} | {a['supported']} of {n} |")
    p = s["paired"]
    lines += ["", f"Paired: the top document differs in {p['top_document_differs']} of {n}; a gold first citation "
                  f"under one prompt only: chain {p['hit_chain_only']}, fixed {p['hit_fixed_only']}; a gold top "
                  f"document under one only: chain {p['top_hit_chain_only']}, fixed {p['top_hit_fixed_only']}."]
    return "\n".join(lines)


def write_readme(path: Path, readme: Path = README) -> None:
    text = readme.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    readme.write_text(text[:start] + "\n" + render(json.loads(path.read_text())) + "\n" + text[end:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.common import DEFAULT_HOTPOT, answer_digest, hotpot_examples

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_HOTPOT))
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--max-docs", type=int, default=5, help="paragraphs per question (gold first kept)")
    ap.add_argument("--model", default="smollm2-135m", help="the local model that answers and scores")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--dtype", default=None, help="fp32 / bf16 (default: the library's choice for this machine)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke test of the script only)")
    ap.add_argument("--readme", metavar="RESULT_JSON", help="only rewrite the README block from this result file")
    args = ap.parse_args(argv)
    if args.readme:
        write_readme(Path(args.readme))
        return json.loads(Path(args.readme).read_text())["summary"]

    from langchain_attribot import AttribotCitations, ChainPrompt, ChatAttribot

    if args.tiny:
        from attribot_rag.testing import tiny_loaded_model

        model: Any = tiny_loaded_model()
        name, load = "tiny", {}
    else:
        model, name, load = args.model, args.model, {"dtype": args.dtype, "device": args.device}
    chain_prompt = ChainPrompt(PROMPT, document=DOCUMENT)
    llm = ChatAttribot(model=model, max_new_tokens=args.max_new_tokens, **load)
    answer_chain = PROMPT | llm
    arms = {
        "chain": AttribotCitations(model, prompt=chain_prompt, strategy=args.strategy, **load),
        "fixed": AttribotCitations(model, strategy=args.strategy, **load),
    }
    settings = {"model": name, "strategy": args.strategy, "max_docs": args.max_docs, "dtype": args.dtype,
                "max_new_tokens": args.max_new_tokens, "prompt_messages": [list(m) for m in chain_prompt.template()
                                                                            .messages], "document": DOCUMENT}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"chain_prompt_{name}_d{args.max_docs}.json"
    rows: list[dict[str, Any]] = []
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("settings") != settings:
            raise SystemExit(f"{path} holds a run with other settings: move it away or use --out")
        rows = saved["rows"]
    done = {r["id"] for r in rows}
    started = time.perf_counter()
    for ex in hotpot_examples(args.data, args.n, args.offset, max_docs=args.max_docs):
        if ex["id"] in done:
            continue
        t = time.perf_counter()
        docs = [Document(id=f"d{i}", page_content=s.text, metadata={"title": s.title})
                for i, s in enumerate(ex["sources"])]
        index = {d.id: i for i, d in enumerate(docs)}
        answer = answer_chain.invoke({"documents": chain_prompt.format_documents(docs), "question": ex["question"]})
        values = {"question": ex["question"], "context": docs, "answer": answer}
        gold = set(ex["gold_documents"])
        rec = {"id": ex["id"], "type": ex["type"], "answer_sha256": answer_digest(answer.text),
               "gold": sorted(gold), "documents": len(docs), "chance": len(gold) / len(docs)}
        for arm, step in arms.items():
            rec[arm] = _arm(step.cite(values), gold, index)
        rec["seconds"] = time.perf_counter() - t
        rows.append(rec)
        _atomic_write(path, {"settings": settings, "summary": summarize(rows), "rows": rows})
        print(f"{len(rows):>3} chain top={rec['chain']['top_document']} hit={rec['chain']['hit']} | "
              f"fixed top={rec['fixed']['top_document']} hit={rec['fixed']['hit']} ({rec['seconds']:.1f}s)",
              flush=True)
    summary = {**summarize(rows), "seconds_this_run": time.perf_counter() - started,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "command": "python integrations/langchain/benchmarks/chain_prompt.py " + " ".join(argv or [])}
    _atomic_write(path, {"settings": settings, "summary": summary, "rows": rows})
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
