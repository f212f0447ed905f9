"""Wall time and forward tokens of each strategy on the same HotpotQA examples and answers.

    python -m benchmarks.speed --n 3 --target qwen2.5-coder-0.5b --proxy smollm2-135m --out benchmarks/results

Every method attributes the same answer (generated once by the target). Reports, per method,
mean wall seconds and forward tokens per example, and the speed-ups of cached+batched over
exact LOO and over a one-ablation-at-a-time cached loop (the published reference's way).
``--batch-size`` sets the cached+batched row's rows per pass (the engine's CPU default is 1, see
README); every other row runs the engine's defaults.
"""

from __future__ import annotations

import argparse
import platform

import torch

from attribot_rag import Attributor, Strategy

from .common import DEFAULT_HOTPOT, hotpot_examples, write_results

METHODS = {
    "exact": Strategy(level="sentence", engine_mode="exact", name="exact"),
    "cached (one at a time)": Strategy(level="sentence", engine_mode="serial", name="serial"),
    "cached+batched": Strategy(level="sentence", engine_mode="batched", name="batched"),
    "hierarchical (top-3 docs)": Strategy(level="hierarchical", keep_top_k=3, name="hierarchical"),
}
PROXY_METHODS = {
    "proxy": Strategy(level="sentence", proxy=True, name="proxy"),
    "proxy+hierarchical": Strategy(level="hierarchical", keep_top_k=3, proxy=True, name="proxy-hierarchical"),
    "proxy-prune (k=8) + target rescoring": Strategy(level="hierarchical", keep_top_k=3, prune_top_k=8,
                                                     name="proxy-prune"),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(DEFAULT_HOTPOT))
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--target", default="qwen2.5-coder-0.5b")
    ap.add_argument("--proxy", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="rows per batched pass (default: engine's)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    att = Attributor(args.target, args.proxy, dtype=args.dtype, strategy="exact")
    methods = dict(METHODS, **(PROXY_METHODS if args.proxy else {}))
    per: dict[str, list[dict]] = {m: [] for m in methods}
    gen_seconds = []
    default_batch = att.target.engine.max_batch_size
    for ex in hotpot_examples(args.data, args.n):
        answer, gen = att._generate(ex["question"], att._prepare(ex["sources"]), args.max_new_tokens)
        gen_seconds.append(gen)
        for name, strat in methods.items():
            # Only the cached+batched row uses --batch-size; the others run the engine's defaults.
            att.target.engine.max_batch_size = args.batch_size if name == "cached+batched" and args.batch_size \
                else default_batch
            res = att.attribute(ex["question"], ex["sources"], answer, strategy=strat)
            per[name].append({
                "seconds": res.timing["total_seconds"],
                "models": res.timing["models"],
            })
            print(f"{ex['id']} {name:<38} {res.timing['total_seconds']:7.1f}s", flush=True)

    def mean(xs):
        return sum(xs) / len(xs)

    table = {}
    for name, runs in per.items():
        table[name] = {
            "seconds": mean([r["seconds"] for r in runs]),
            "forward_tokens": {m: mean([r["models"].get(m, {}).get("forward_tokens", 0) for r in runs])
                               for m in {k for r in runs for k in r["models"]}},
            "forward_passes": {m: mean([r["models"].get(m, {}).get("forward_passes", 0) for r in runs])
                               for m in {k for r in runs for k in r["models"]}},
        }
    exact = table["exact"]["seconds"]
    serial = table["cached (one at a time)"]["seconds"]
    for row in table.values():
        row["speedup_vs_exact"] = exact / row["seconds"]
        row["speedup_vs_serial_cached"] = serial / row["seconds"]
    summary = {
        "target": args.target, "proxy": args.proxy, "examples": len(gen_seconds),
        "dtype": str(att.target.loaded.model.dtype), "device": str(att.target.loaded.device),
        "batched_rows_per_pass": args.batch_size or default_batch, "default_rows_per_pass": default_batch,
        "torch_threads": torch.get_num_threads(),
        "generation_seconds": mean(gen_seconds), "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "methods": table,
    }
    lines = [
        "| method | s / example | forward tokens / example | x vs exact | x vs cached one-at-a-time | "
        "generation / attribution |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        toks = ", ".join(f"{m}: {t:,.0f}" for m, t in sorted(row["forward_tokens"].items()))
        lines.append(f"| {name} | {row['seconds']:.1f} | {toks} | {row['speedup_vs_exact']:.1f} | "
                     f"{row['speedup_vs_serial_cached']:.2f} | {summary['generation_seconds'] / row['seconds']:.2f} |")
    stem = f"speed_{args.target}" + (f"_proxy_{args.proxy}" if args.proxy else "")
    write_results(args.out, stem, summary, "\n".join(lines))


if __name__ == "__main__":
    main()
