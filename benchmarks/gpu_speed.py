"""Speed at real model shapes: randomly initialised Llama-3.1-8B-shaped target, Llama-3.2-1B-shaped proxy.

    python -m benchmarks.gpu_speed --n 5 --out benchmarks/results          # on a GPU, bf16
    python -m benchmarks.gpu_speed --n 1 --target-shape tiny --proxy-shape tiny --device cpu --dtype fp32

A GPU machine without the GGUF packages takes a saved tokenizer folder: ``--tokenizer DIR``
(``Attributor("smollm2-135m").target.loaded.tokenizer.save_pretrained(DIR)`` here).

Weights are random, so the scores mean nothing; the compute is that of the real models (same
layers, widths, heads, KV heads, vocabulary) on real HotpotQA contexts (all ten paragraphs). The
tokenizer is SmolLM2's (its ids fit the 128k vocabulary). Each example's answer is its first
supporting sentence, read from the data at run time, so answer lengths are realistic without a
meaningful generation. Generation time is the target decoding that many tokens greedily from the
same prompt (``min_new_tokens`` = ``max_new_tokens``). Reports naive exact LOO vs the default
configuration (and the other strategies) per example, the ratio, and attribution / generation.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from attribot_rag import Attributor, LoadedModel, Strategy

from .common import DEFAULT_HOTPOT, hotpot_examples, write_results

# Published configs (config.json of meta-llama/Llama-3.1-8B and Llama-3.2-1B), minus the weights.
SHAPES: dict[str, dict] = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072, tie_word_embeddings=False),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072, tie_word_embeddings=True),
    # For a CPU check of the mechanics only.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, max_position_embeddings=8192),
}
STRATEGIES = {
    "naive exact LOO": Strategy(level="sentence", engine_mode="exact", name="exact"),
    "cached+batched exact LOO": Strategy(level="sentence", engine_mode="batched", name="batched"),
    "default (auto = hierarchical, top-3 docs)": "auto",
    "proxy prune + target rescoring": "proxy-prune",
    # issue #17 (approximate, labelled so): masked LOO, the pruned-context hierarchy, masked + exact rescoring
    "masked LOO (approximate)": "masked",
    "hierarchical-pruned (approximate)": "hierarchical-pruned",
    "masked + exact rescoring of 8 sentences (approximate)": "masked-rescore",
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def random_model(shape: str, tokenizer, device: str, dtype: torch.dtype, seed: int) -> LoadedModel:
    """A Llama of the named shape with random weights, built directly on ``device``."""
    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if cfg.vocab_size < len(tokenizer):
        raise SystemExit(f"shape {shape!r} has {cfg.vocab_size} token ids, the tokenizer {len(tokenizer)}")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    return LoadedModel(name=f"random {shape}", model=model.eval(), tokenizer=tokenizer)


def load_tokenizer(name_or_path: str):
    """A tokenizer folder as it is (e.g. carried to a GPU machine), an embedded model's tokenizer
    (from its converted folder: no weights loaded once converted), else a Hub id's tokenizer."""
    from transformers import AutoTokenizer

    from attribot_rag.models import REGISTRY, convert_gguf, pull

    if name_or_path in REGISTRY and not Path(name_or_path).is_dir():
        return AutoTokenizer.from_pretrained(convert_gguf(pull(name_or_path), REGISTRY[name_or_path].sha256))
    return AutoTokenizer.from_pretrained(name_or_path)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_HOTPOT))
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--docs", type=int, default=0, help="paragraphs per example, gold first (default: all ten)")
    ap.add_argument("--target-shape", default="llama-3.1-8b")
    ap.add_argument("--proxy-shape", default="llama-3.2-1b")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="a tokenizer folder, or a model name")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    tok = load_tokenizer(args.tokenizer)
    dtype = DTYPES[args.dtype]
    t0 = time.perf_counter()
    target = random_model(args.target_shape, tok, args.device, dtype, seed=0)
    proxy = random_model(args.proxy_shape, tok, args.device, dtype, seed=1)
    build_seconds = time.perf_counter() - t0
    att = Attributor(target, proxy)
    # One example more than --n: the first warms up kernels and the allocator and is not counted.
    examples = hotpot_examples(args.data, args.n + 1, max_docs=args.docs or None)
    per: dict[str, list[float]] = {k: [] for k in STRATEGIES}
    gen, prompt_tokens, answer_tokens = [], [], []
    for i, ex in enumerate(examples):
        d, s = sorted(ex["gold_sentences"])[0]
        answer = ex["sources"][d].sentences[s].text.strip()
        enc = att.encode(ex["question"], ex["sources"], answer)
        ids = torch.tensor([enc.prompt_ids], device=args.device)
        _sync(args.device)
        g0 = time.perf_counter()
        with torch.no_grad():
            target.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=len(enc.answer_ids), min_new_tokens=len(enc.answer_ids),
                                  pad_token_id=tok.eos_token_id)
        _sync(args.device)
        g = time.perf_counter() - g0
        row = {}
        for name, strat in STRATEGIES.items():
            _sync(args.device)
            a0 = time.perf_counter()
            # leave-one-out only (the verdicts' context-support passes are the same for every method)
            att.attribute(ex["question"], ex["sources"], answer, strategy=strat, context_support=False)
            _sync(args.device)
            row[name] = time.perf_counter() - a0
        print(f"{'warm-up' if i == 0 else ex['id']}: prompt {len(enc.prompt_ids)} answer {len(enc.answer_ids)} "
              f"tokens, generation {g:.2f}s, " + ", ".join(f"{k} {v:.2f}s" for k, v in row.items()), flush=True)
        if i == 0:
            continue
        gen.append(g)
        prompt_tokens.append(len(enc.prompt_ids))
        answer_tokens.append(len(enc.answer_ids))
        for k, v in row.items():
            per[k].append(v)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    naive = mean(per["naive exact LOO"])
    summary = {
        "benchmark": "gpu_speed", "target_shape": args.target_shape, "proxy_shape": args.proxy_shape,
        "weights": "random", "tokenizer": args.tokenizer, "dtype": args.dtype, "examples": len(gen),
        "docs": args.docs or "all",
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
        "build_seconds": build_seconds, "mean_prompt_tokens": mean(prompt_tokens),
        "mean_answer_tokens": mean(answer_tokens), "generation_seconds": mean(gen),
        "methods": {k: {"seconds": mean(v), "speedup_vs_naive": naive / mean(v),
                        "attribution_over_generation": mean(v) / mean(gen)} for k, v in per.items()},
        "command": "python -m benchmarks.gpu_speed " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    lines = [f"{summary['examples']} HotpotQA examples, {summary['mean_prompt_tokens']:.0f} prompt / "
             f"{summary['mean_answer_tokens']:.0f} answer tokens, {args.dtype} on {summary['device']}; random "
             f"weights of {args.target_shape} (target) and {args.proxy_shape} (proxy) shapes. Generation "
             f"{summary['generation_seconds']:.2f} s / example.", "",
             "| method | s / example | x vs naive | attribution / generation |", "|---|---|---|---|"]
    for k, m in summary["methods"].items():
        lines.append(f"| {k} | {m['seconds']:.2f} | {m['speedup_vs_naive']:.1f} | "
                     f"{m['attribution_over_generation']:.2f} |")
    write_results(args.out, f"gpu_speed_{args.target_shape}_proxy_{args.proxy_shape}_{args.dtype}", summary,
                  "\n".join(lines))
    return summary


if __name__ == "__main__":
    main()
