"""Throughput of ``attribot-rag batch``: the local engine vs the Ray engine on one machine.

    python -m benchmarks.batch_throughput --n 20 --target smollm2-135m --out benchmarks/results

Builds ``--n`` records from the HotpotQA dev set (the gold paragraphs plus distractors up to
``--docs`` documents, the gold answer string as the answer, so nothing is generated), writes
them as JSONL, and runs the same batch job (default strategy, shards of ``--shard-size``)
with each engine setting:

* ``local-1t``: one process, one torch thread;
* ``local-2t``: one process, two torch threads;
* ``ray-2x1``: a local Ray instance with 2 CPUs, 2 actors of 1 CPU / 1 torch thread each.

Run it with ``OMP_WAIT_POLICY=PASSIVE`` on a machine other jobs share: with OpenMP's default
spin-waiting, a two-thread process whose second core is busy runs many times slower.

Wall time is end to end (model loading, Ray start-up and actor start-up included), so it is
what a user waits for; ``mean_record_seconds`` is the attribution time per record measured
inside the worker. Rows are compared across engines: ids/errors must match exactly; scores
are compared as numbers (different thread counts change float summation order, and in bf16
that moves scores by more than rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from attribot_rag.batch import read_output, run_batch

from .common import DEFAULT_HOTPOT, hotpot_examples

SETTINGS = {
    "local-1t": {"engine": "local", "threads": 1},
    "local-2t": {"engine": "local", "threads": 2},
    "ray-2x1": {"engine": "ray", "num_actors": 2, "cpus_per_actor": 1, "threads": 1,
                "ray_init_kwargs": {"num_cpus": 2, "include_dashboard": False}},
}


def write_records(path: Path, data: str, n: int, docs: int) -> None:
    """HotpotQA examples as batch records ``{id, question, documents: [{id, text}], answer}``."""
    with open(path, "w") as f:
        for ex in hotpot_examples(data, n=n, max_docs=docs):
            documents = [{"id": s.id, "text": s.text} for s in ex["sources"]]
            f.write(json.dumps({"id": ex["id"], "question": ex["question"], "documents": documents,
                                "answer": ex["answer"]}) + "\n")


def compare(a: list[dict], b: list[dict]) -> dict:
    """How close two engines' rows are: identical ids/errors, top citation, max score difference."""
    same_ids = [r["id"] for r in a] == [r["id"] for r in b] and [r["error"] for r in a] == [r["error"] for r in b]
    top = [(r["citations"][0]["source_id"], r["citations"][0]["sentence"]) if r["citations"] else None for r in a]
    top_b = [(r["citations"][0]["source_id"], r["citations"][0]["sentence"]) if r["citations"] else None for r in b]
    diffs = [abs(x["score"] - y["score"]) for ra, rb in zip(a, b) for x, y in zip(ra["sources"], rb["sources"])]
    strip = [{k: v for k, v in r.items() if k != "timing"} for r in a]
    strip_b = [{k: v for k, v in r.items() if k != "timing"} for r in b]
    return {"same_ids_and_errors": same_ids, "identical_rows": strip == strip_b,
            "same_top_citation": sum(x == y for x, y in zip(top, top_b)) / max(len(top), 1),
            "max_document_score_diff": max(diffs, default=0.0)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_HOTPOT))
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--docs", type=int, default=4, help="documents per record (gold + distractors)")
    ap.add_argument("--shard-size", type=int, default=2)
    ap.add_argument("--dtype", default=None, help="default: the library's (bf16 on a CPU with native bf16)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {', '.join(SETTINGS)}")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    from attribot_rag.models import default_dtype

    runs, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "records.jsonl"
        write_records(records, args.data, args.n, args.docs)
        for name in args.settings.split(","):
            kw = SETTINGS[name]
            start = time.perf_counter()
            summary = run_batch(records, Path(tmp) / name, target=args.target, dtype=args.dtype,
                                shard_size=args.shard_size, progress=False, **kw)
            wall = time.perf_counter() - start
            rows = read_output(Path(tmp) / name)
            outputs[name] = rows
            per_record = [r["timing"]["seconds"] for r in rows if r["error"] is None]
            run = {
                "setting": name, "engine": kw["engine"],
                "settings": {k: v for k, v in kw.items() if k != "engine"},
                "wall_seconds": round(wall, 2), "records_per_second": round(summary.written / wall, 4),
                "mean_record_seconds": round(sum(per_record) / max(len(per_record), 1), 3),
                "ok": summary.ok, "failed": summary.failed,
            }
            runs.append(run)
            print(json.dumps(run), flush=True)
    names = list(outputs)
    agreement = {f"{a} vs {b}": compare(outputs[a], outputs[b]) for a in names for b in names if a < b}
    result = {
        "target": args.target, "dtype": args.dtype or str(default_dtype("cpu")).replace("torch.", ""),
        "strategy": "auto", "records": args.n, "documents_per_record": args.docs, "shard_size": args.shard_size,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_1m_at_end": os.getloadavg()[0]},  # other jobs on the machine skew wall times
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
        "command": " ".join([*(f"{k}={v}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if (v := os.environ.get(k))),
                             f"python -m benchmarks.batch_throughput --n {args.n} --target {args.target} "
                             f"--docs {args.docs}"]),
        "runs": runs, "agreement": agreement,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"batch_throughput_{args.target.replace('/', '_')}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(agreement, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
