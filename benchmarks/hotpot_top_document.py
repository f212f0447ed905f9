"""How often is the top-ranked document a gold supporting document? (HotpotQA, chance = 2/10)

The target model answers each question itself (greedy), then attributes its own answer.

    python -m benchmarks.hotpot_top_document --n 20 --target smollm2-135m --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from attribot_rag import Attributor

from .common import DEFAULT_HOTPOT, answer_digest, hotpot_examples


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(DEFAULT_HOTPOT))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    attributor = Attributor(args.target, strategy=args.strategy, dtype=args.dtype)
    rows, hits, chance, sentence_chance = [], 0, 0.0, 0.0
    started = time.perf_counter()
    for ex in hotpot_examples(args.data, args.n, args.offset):
        res = attributor.attribute(ex["question"], ex["sources"], max_new_tokens=args.max_new_tokens)
        ranked = sorted(range(len(res.sources)), key=lambda d: -res.document_scores[d].score)
        top = ranked[0]  # paragraph index: titles are data and stay in ../shared/data
        hit = top in ex["gold_documents"]
        hits += hit
        chance += len(ex["gold_documents"]) / len(res.sources)
        sentence_chance += len(ex["gold_sentences"]) / sum(len(s.sentences) for s in res.sources)
        top_cite = res.citations(top_k=1)
        rows.append({
            # ids, an answer digest and hit flags only: the data, its labels (the supporting
            # documents) and answers quoting it stay in ../shared/data
            "id": ex["id"], "answer_sha256": answer_digest(res.answer), "top_document": top, "hit": hit,
            "top_sentence_is_gold": bool(top_cite)
            and (top_cite[0].source_index, top_cite[0].sentence_index) in ex["gold_sentences"],
            "timing": res.timing,
        })
        print(f"{len(rows):>3} hit={hit!s:<5} top={top} gold={sorted(ex['gold_documents'])} "
              f"({res.timing['total_seconds']:.1f}s)", flush=True)
    n = len(rows)
    summary = {
        "target": args.target, "strategy": attributor.strategy.name, "dtype": str(attributor.target.loaded.model.dtype),
        "examples": n, "top1_document_gold_rate": hits / n, "chance_rate": chance / n,
        "top1_sentence_gold_rate": sum(r["top_sentence_is_gold"] for r in rows) / n,
        "sentence_chance_rate": sentence_chance / n,
        "seconds_total": time.perf_counter() - started, "data": str(args.data), "offset": args.offset,
    }
    print(json.dumps(summary, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"hotpot_top_document_{args.target}.json").write_text(json.dumps({"summary": summary, "rows": rows},
                                                                              indent=2, default=str))


if __name__ == "__main__":
    main()
