"""Peak memory of attributing an answer over a long (~8k-token) context.

    python -m benchmarks.peak_memory --target smollm2-135m --tokens 7800 --out benchmarks/results

Builds one prompt from the documents of consecutive HotpotQA dev examples until it holds about
``--tokens`` tokens, attributes a fixed answer at document level then sentence level inside
the top documents (the default hierarchical strategy), and reports the peak resident memory
above the level reached once the model is loaded (``ru_maxrss`` high-water marks), with the
wall time and forward tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from attribot_rag import Attributor, PromptBuilder

from .common import DEFAULT_HOTPOT, hotpot_examples


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(DEFAULT_HOTPOT))
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=7800)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    att = Attributor(args.target, dtype=args.dtype, strategy="hierarchical", max_batch_tokens=args.max_batch_tokens)
    builder = PromptBuilder(att.target.loaded.tokenizer)
    examples = hotpot_examples(args.data, n=60)
    question, answer = examples[0]["question"], f"The answer is {examples[0]['answer']}."
    sources = []
    for ex in examples:
        for src in ex["sources"]:
            trial = sources + [src]
            if len(builder.encode_prompt(question, trial)) > args.tokens:
                break
            sources = trial
        else:
            continue
        break
    n_tokens = len(builder.encode_prompt(question, sources)) + len(builder.encode_answer(answer).ids)
    baseline = _peak_mib()
    start = time.perf_counter()
    res = att.attribute(question, sources, answer)
    seconds = time.perf_counter() - start
    peak = _peak_mib()
    summary = {
        "target": args.target, "dtype": str(att.target.loaded.model.dtype), "sources": len(sources),
        "sequence_tokens": n_tokens, "strategy": res.strategy,
        "max_batch_tokens": att.target.engine.max_batch_tokens, "max_batch_size": att.target.engine.max_batch_size,
        "peak_rss_mib_after_load": baseline, "peak_rss_mib": peak, "peak_extra_mib": peak - baseline,
        "seconds": seconds, "models": res.timing["models"],
    }
    print(json.dumps(summary, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"peak_memory_{args.target}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
