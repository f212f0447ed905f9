"""Can a user trust the verdicts? Supported / used / cited against HotpotQA's gold, per scorer model.

Three conditions per example (HotpotQA, gold paragraphs + distractors, ``--max-docs`` paragraphs):

* ``correct``: the dataset's gold answer is the answer (the API-model case);
* ``madeup``: another question's gold answer (one that does not occur in this context);
* ``redundant``: the correct answer, with the gold paragraph holding it duplicated under a new
  title at the end of the context (evidence present twice).

Yes/no questions are skipped (a "yes" from another question can be right by chance).

Each run writes raw signals (LOO scores, context lift, sufficiency, a prompted judge's log-odds,
seconds) to ``trust_records_<model>.jsonl``, one line per (split, example, condition), and
resumes from it; verdicts are recomputed from the records by the library's own decision layer,
so rules are compared on identical scores. Calibration on HotpotQA *train*, report on *dev*.

    python -m benchmarks.trust run --model smollm2-135m --split train --n 40
    python -m benchmarks.trust run --model smollm2-135m --split dev --n 100
    python -m benchmarks.trust noise --model smollm2-135m --split train --n 12   # bf16 vs fp32
    python -m benchmarks.trust report     # JSON + md for every model with records
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attribot_rag import AttributionResult, Attributor, Source, SpanScore, split_text
from attribot_rag.attributor import is_within_kept, resolve_strategy
from attribot_rag.decisions import DEFAULT_RULE, LOO_ONLY_RULE, DecisionRule
from attribot_rag.masked import is_approximate
from attribot_rag.noise import estimate
from attribot_rag.result import ContextSupport

from .common import DATA_ROOT, answer_digest, hotpot_examples, write_block

OUT = Path(__file__).resolve().parent / "results"
SPLITS = {"train": DATA_ROOT / "hotpotqa" / "train.jsonl", "dev": DATA_ROOT / "hotpotqa" / "dev.jsonl"}
CONDITIONS = ("correct", "madeup", "redundant")


# ---------------------------------------------------------------------------- examples
def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def examples(split: str, max_docs: int) -> list[dict]:
    """The split's non-yes/no examples, each with its made-up answer and redundant context."""
    rows = [r for r in hotpot_examples(SPLITS[split], max_docs=max_docs) if _norm(r["answer"]) not in ("yes", "no")]
    answers = [r["answer"] for r in rows]
    for i, r in enumerate(rows):
        context = _norm(" ".join(s.text for s in r["sources"]))
        # another question's answer that this context does not contain: made up, as far as it is concerned
        for step in range(7, 7 + len(rows)):
            cand = answers[(i + step) % len(rows)]
            if _norm(cand) != _norm(r["answer"]) and _norm(cand) not in context:
                r["madeup"] = cand
                break
        golds = sorted(r["gold_documents"])
        holding = [d for d in golds if _norm(r["answer"]) in _norm(r["sources"][d].text)]
        dup = (holding or golds)[0]
        src = r["sources"][dup]
        copy = Source.from_sentences(f"{src.id} (copy)", [s.text for s in src.sentences], {"title": f"{src.id} (copy)"})
        r["redundant_sources"] = [*r["sources"], copy]
        r["duplicate"] = (dup, len(r["sources"]))
    return rows


def condition_input(ex: dict, condition: str) -> tuple[list[Source], str]:
    if condition == "correct":
        return ex["sources"], ex["answer"]
    if condition == "madeup":
        return ex["sources"], ex["madeup"]
    return ex["redundant_sources"], ex["answer"]


def gold_documents(ex: dict, condition: str) -> set[int]:
    gold = set(ex["gold_documents"])
    if condition == "redundant" and ex["duplicate"][0] in gold:
        gold.add(ex["duplicate"][1])
    return gold


def gold_sentences(ex: dict, condition: str) -> set[tuple[int, int]]:
    gold = set(ex["gold_sentences"])
    if condition == "redundant":
        d, copy = ex["duplicate"]
        gold |= {(copy, k) for (dd, k) in ex["gold_sentences"] if dd == d}
    return gold


# ---------------------------------------------------------------------------- baselines
def bm25_order(question: str, sources: Sequence[Source], k1: float = 1.2, b: float = 0.75) -> list[int]:
    """The retriever baseline: BM25 over the paragraphs (title + text), best first."""
    tok = lambda s: re.findall(r"\w+", s.lower())  # noqa: E731
    docs = [tok(f"{s.id} {s.text}") for s in sources]
    avg = sum(map(len, docs)) / max(len(docs), 1)
    df = Counter(w for d in docs for w in set(d))
    n = len(docs)

    def score(d: list[str]) -> float:
        tf = Counter(d)
        return sum(
            math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5)) * tf[w] * (k1 + 1)
            / (tf[w] + k1 * (1 - b + b * len(d) / avg))
            for w in set(tok(question)) if w in tf
        )

    return sorted(range(n), key=lambda i: (-score(docs[i]), i))


def judge_log_odds(att: Attributor, question: str, sources: Sequence[Source], answer: str) -> tuple[float, float]:
    """A prompted judge (the LLM-judge groundedness check): the scorer model asked whether the
    documents support the answer; its log p(yes) - log p(no) for the next token, and seconds."""
    import torch

    from attribot_rag import PromptBuilder, PromptTemplate

    loaded = att.target.loaded
    template = PromptTemplate(instruction="Do the documents above support the proposed answer to the question? "
                                          "Reply with yes or no.")
    builder = PromptBuilder(loaded.tokenizer, template)
    started = time.perf_counter()
    ids = builder.encode_prompt(f"{question}\nProposed answer: {answer}", list(sources))
    tok = loaded.tokenizer
    yes = {tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "Yes", " yes", " Yes")}
    no = {tok.encode(w, add_special_tokens=False)[0] for w in ("no", "No", " no", " No")}
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.device), logits_to_keep=1).logits[0, -1]
    lp = torch.log_softmax(logits.float(), -1)
    odds = float(torch.logsumexp(lp[list(yes)], 0) - torch.logsumexp(lp[list(no)], 0))
    return odds, time.perf_counter() - started


# ---------------------------------------------------------------------------- records
DEFAULT_STRATEGY = resolve_strategy("auto", has_proxy=False).name  # what a run without --strategy scores with


def run_name(model: str, strategy: str = "auto") -> str:
    """A run's name in its file names: the model, plus the strategy when it is not the default."""
    return model if resolve_strategy(strategy, has_proxy=False).name == DEFAULT_STRATEGY else f"{model}_{strategy}"


def records_path(model: str, out: Path = OUT) -> Path:
    """``model``: a :func:`run_name`."""
    return out / f"trust_records_{model}.jsonl"


def load_records(path: Path) -> dict[tuple[str, str, str], dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["split"], r["id"], r["condition"])] = r
    return done


def _span(s: SpanScore) -> list:
    return [s.score, s.scored_by, s.answer_sentence_scores]


def record_of(res: AttributionResult, ex: dict, split: str, condition: str, seconds: float,
              judge: tuple[float, float], machine: dict) -> dict:
    return {
        "split": split, "id": ex["id"], "condition": condition, "answer_sha256": answer_digest(res.answer),
        "n_sources": len(res.sources), "documents": [_span(d) for d in res.document_scores],
        "sentences": [[_span(s) for s in row] for row in res.sentence_scores],
        "support": res.support.to_dict(), "noise": res.noise.to_dict(), "strategy": res.strategy,
        "seconds": seconds, "judge_log_odds": judge[0], "judge_seconds": judge[1],
        "models": res.timing["models"], "support_seconds": res.timing["context_support"]["seconds"],
        "machine": machine,
    }


def result_from(rec: dict, ex: dict) -> AttributionResult:
    """Rebuild the AttributionResult of a record (texts from the data, scores from the record)."""
    sources, answer = condition_input(ex, rec["condition"])
    if answer_digest(answer) != rec["answer_sha256"]:
        raise ValueError(f"record {rec['id']}/{rec['condition']} was made for another answer")

    def span(d: int, k: int | None, v: list) -> SpanScore:
        return SpanScore(d, k, v[0], v[2], v[1])

    sup = rec["support"]
    return AttributionResult(
        question=ex["question"], answer=answer, sources=sources, answer_sentences=split_text(answer, None),
        document_scores=[span(d, None, v) for d, v in enumerate(rec["documents"])],
        sentence_scores=[[span(d, k, v) for k, v in enumerate(row)] for d, row in enumerate(rec["sentences"])],
        strategy=rec["strategy"],
        support=ContextSupport(sup["lift"], sup["sufficiency"], sup["answer_tokens"], sup["scored_by"]),
        # today's calibration, not the one in force when the record was made: every record is judged alike
        noise=estimate(rec["support"]["scored_by"], rec["noise"]["dtype"]),
    )


def _machine() -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None, "load_1m": load,
            "cpus": os.cpu_count()}


def run(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    att = Attributor(args.model, dtype=args.dtype, strategy=args.strategy)
    path = records_path(run_name(args.model, args.strategy), Path(args.out))
    path.parent.mkdir(parents=True, exist_ok=True)
    done = load_records(path)
    rows = examples(args.split, args.max_docs)[args.offset: args.offset + args.n]
    for i, ex in enumerate(rows):
        for condition in CONDITIONS:
            if (args.split, ex["id"], condition) in done:
                continue
            sources, answer = condition_input(ex, condition)
            started = time.perf_counter()
            res = att.attribute(ex["question"], sources, answer)
            seconds = time.perf_counter() - started
            judge = judge_log_odds(att, ex["question"], sources, answer)
            rec = record_of(res, ex, args.split, condition, seconds, judge, _machine())
            with path.open("a") as f:  # one line per finished attribution: a killed run resumes here
                f.write(json.dumps(rec) + "\n")
            print(f"{args.split} {i + args.offset:>3} {condition:<9} lift={res.support.total_lift:7.2f} "
                  f"{seconds:5.1f}s", flush=True)


# ---------------------------------------------------------------------------- noise calibration
def noise(args: argparse.Namespace) -> None:
    """bf16 vs fp32 through the same engine path: every reported span's difference, with its token count."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.out) / f"trust_noise_{args.model}.jsonl"
    done = {(r["split"], r["id"]) for r in map(json.loads, path.read_text().splitlines())} if path.exists() else set()
    # document-level LOO + the context-support passes: the same engine path as every sentence pass, at a
    # fraction of the cost (fp32 takes ~3.3x bf16's time)
    reduced = Attributor(args.model, dtype=args.dtype or "bf16", strategy=args.noise_strategy)
    full = Attributor(args.model, dtype="fp32", strategy=args.noise_strategy)
    for ex in examples(args.split, args.max_docs)[args.offset: args.offset + args.n]:
        if (args.split, ex["id"]) in done:
            continue
        a = reduced.attribute(ex["question"], ex["sources"], ex["answer"])
        b = full.attribute(ex["question"], ex["sources"], ex["answer"])
        pairs = []  # (|difference|, answer tokens it sums over, kind)
        n_tok = sum(a.support.answer_tokens)
        for x, y in zip(a.document_scores, b.document_scores):
            pairs.append((abs(x.score - y.score), n_tok, "document"))
        for ra, rb in zip(a.sentence_scores, b.sentence_scores):
            for x, y in zip(ra, rb):
                if x.scored and y.scored:
                    pairs.append((abs(x.score - y.score), n_tok, "sentence"))
        for j, t in enumerate(a.support.answer_tokens):
            pairs.append((abs(a.support.lift[j] - b.support.lift[j]), t, "lift"))
        for d in range(len(a.sources)):
            for j, t in enumerate(a.support.answer_tokens):
                pairs.append((abs(a.support.sufficiency[d][j] - b.support.sufficiency[d][j]), t, "sufficiency"))
        with path.open("a") as f:
            rec = {"split": args.split, "id": ex["id"], "dtype": str(a.noise.dtype), "pairs": pairs}
            f.write(json.dumps(rec) + "\n")
        print(f"{args.split} {ex['id'][:8]} max diff {max(p[0] for p in pairs):.3f}", flush=True)


def noise_summary(model: str, out: Path = OUT, quantile: float = 0.99) -> dict | None:
    path = out / f"trust_noise_{model}.jsonl"
    if not path.exists():
        return None
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    summary: dict[str, Any] = {"model": model, "quantile": quantile}
    for split in ("train", "dev"):
        pairs = [p for r in recs if r["split"] == split for p in r["pairs"]]
        if not pairs:
            continue
        ratios = sorted(d / math.sqrt(max(n, 1)) for d, n, _ in pairs)
        coef = ratios[min(int(quantile * len(ratios)), len(ratios) - 1)]
        summary[split] = {"examples": sum(r["split"] == split for r in recs), "spans": len(pairs),
                          "per_sqrt_token_q": coef, "max_difference": max(p[0] for p in pairs),
                          "dtype": recs[0]["dtype"]}
    if "train" in summary and "dev" in summary:
        c = summary["train"]["per_sqrt_token_q"]
        dev = [p for r in recs if r["split"] == "dev" for p in r["pairs"]]
        summary["dev_bounded_by_train_calibration"] = sum(d <= c * math.sqrt(max(n, 1)) for d, n, _ in dev) / len(dev)
    return summary


# ---------------------------------------------------------------------------- verdicts and metrics
def _mean(xs: Sequence[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def evaluate(pairs: list[tuple[dict, dict]], method: str, rule: DecisionRule | None = None,
             judge_threshold: float = 0.0, prebuilt: list | None = None) -> dict[str, Any]:
    """Metrics of one method over (record, example) pairs. ``method``: ``rule``, ``retriever`` or ``judge``.
    ``prebuilt``: ``(record, example, result)`` triples, to skip rebuilding results in a grid search."""
    built = {id(r): res for r, _, res in prebuilt} if prebuilt else {}
    out: dict[str, list] = {k: [] for k in ("top_doc", "top_doc_supported", "top_sent", "prec", "rec", "flag_correct",
                                            "flag_madeup", "used_madeup", "both_copies", "seconds")}
    for rec, ex in pairs:
        cond = rec["condition"]
        gold = gold_documents(ex, cond)
        if method == "rule":
            res = built.get(id(rec)) or result_from(rec, ex)
            v = res.decisions(rule)
            supported = v.supported is not False
            used = {i for i, u in enumerate(v.used) if u}
            top_doc = v.cited_sources[0] if v.cited_sources else None
            top_sent = (v.citations[0].source_index, v.citations[0].sentence_index) if v.citations else None
            seconds = rec["seconds"]
        elif method == "retriever":
            sources, _ = condition_input(ex, cond)
            order = bm25_order(ex["question"], sources)
            supported, used, top_doc, top_sent = True, set(order[:2]), order[0], None
            seconds = 0.0
        else:  # judge: supported = yes-odds above the threshold; it names no source
            supported = rec["judge_log_odds"] > judge_threshold
            used, top_doc, top_sent = set(), None, None
            seconds = rec["judge_seconds"]
        out["seconds"].append(seconds)
        if cond == "correct":
            out["flag_correct"].append(not supported)
            if method != "judge":
                out["top_doc"].append(top_doc in gold)
                if supported:  # the top citation a user sees, when one is shown at all
                    out["top_doc_supported"].append(top_doc in gold)
                if method == "rule":
                    out["top_sent"].append(top_sent in gold_sentences(ex, cond))
                out["prec"].append(len(used & gold) / len(used) if used else None)
                out["rec"].append(len(used & gold) / len(gold))
        elif cond == "madeup":
            out["flag_madeup"].append(not supported)
            if supported and method != "judge":
                out["used_madeup"].append(len(used))
        elif method != "judge":
            dup, copy = ex["duplicate"]
            out["both_copies"].append(dup in used and copy in used)
    prec = [p for p in out["prec"] if p is not None]
    return {
        "top_document_gold": _mean(out["top_doc"]), "top_sentence_gold": _mean(out["top_sent"]),
        "top_document_gold_when_cited": _mean(out["top_doc_supported"]),
        "used_precision": _mean(prec), "used_recall": _mean(out["rec"]),
        "used_none_on_correct": _mean([p is None for p in out["prec"]]),
        "flagged_unsupported_correct": _mean(out["flag_correct"]),
        "flagged_unsupported_madeup": _mean(out["flag_madeup"]),
        "used_per_unflagged_madeup": _mean(out["used_madeup"]),
        "both_copies_used": _mean(out["both_copies"]),
        "seconds_per_attribution": _mean(out["seconds"]),
        "n": {"correct": len(out["flag_correct"]), "madeup": len(out["flag_madeup"]),
              "redundant": len(out["both_copies"])},
    }


def _pairs(model: str, split: str, max_docs: int, out: Path) -> list[tuple[dict, dict]]:
    recs = load_records(records_path(model, out))
    by_id = {e["id"]: e for e in examples(split, max_docs)}
    # an example counts once all its conditions are recorded, so every metric sees the same questions
    ids = [i for i in by_id if all((split, i, c) in recs for c in CONDITIONS)]
    return [(recs[(split, i, c)], by_id[i]) for i in ids for c in CONDITIONS]


def support_auc(pairs: list[tuple[dict, dict]], rule: DecisionRule | None) -> float | None:
    """Threshold-free separability of correct (and redundant) from made-up answers: the probability that
    a correct answer's support score exceeds a made-up one's (``rule=None``: the judge's log-odds)."""
    def score(rec: dict, ex: dict) -> float:
        if rule is None:
            return rec["judge_log_odds"]
        return result_from(rec, ex).decisions(rule).lift

    pos = [score(r, e) for r, e in pairs if r["condition"] != "madeup"]
    neg = [score(r, e) for r, e in pairs if r["condition"] == "madeup"]
    if not pos or not neg:
        return None
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def best_judge_threshold(pairs: list[tuple[dict, dict]]) -> float:
    """The judge's log-odds threshold with the best balanced accuracy (correct vs made-up) on these pairs."""
    pos = [r["judge_log_odds"] for r, _ in pairs if r["condition"] == "correct"]
    neg = [r["judge_log_odds"] for r, _ in pairs if r["condition"] == "madeup"]
    if not pos or not neg:
        return 0.0
    cands = sorted(set(pos + neg))
    def bacc(t: float) -> float:
        return (sum(p > t for p in pos) / len(pos) + sum(n <= t for n in neg) / len(neg)) / 2
    return max(cands, key=bacc)


GRID = {
    "min_lift": (0.0, 1.0, 2.0, 3.0, 4.0, 6.0),
    "support_from": ("lift", "best"),
    "min_loo": (0.25, 0.5, 1.0, 2.0),
    "min_share": (None, 0.05, 0.15),
    "min_sufficiency": (None, 0.5, 1.0, 2.0, 4.0),
    "sufficiency_ratio": (0.1, 0.25, 0.5, 0.75),
    "sufficiency_over": ("none", "median"),
}


def objective(m: dict) -> float:
    """What the thresholds are chosen for: the mean of the issue's verdict goals, each as a rate to maximise."""
    parts = [1 - (m["flagged_unsupported_correct"] or 0), m["flagged_unsupported_madeup"] or 0,
             m["used_precision"] or 0, m["used_recall"] or 0, m["both_copies_used"] or 0, m["top_document_gold"] or 0]
    return sum(parts) / len(parts)


NOISE_FILE = Path(__file__).resolve().parents[1] / "attribot_rag" / "data" / "noise_calibration.json"


def write_noise(model: str, out: Path) -> None:
    """Store the train split's noise coefficient for ``model`` in the package's noise_calibration.json."""
    nz = noise_summary(model, out)
    if not nz or "train" not in nz:
        print(f"no train noise records for {model}: run `noise --split train` first")
        return
    data = json.loads(NOISE_FILE.read_text()) if NOISE_FILE.exists() else {}
    data.setdefault("about", "per_sqrt_token[dtype][model]: the 99th percentile of |score(dtype) - score(fp32)| / "
                             "sqrt(answer tokens) over every span of HotpotQA train examples "
                             "(python -m benchmarks.trust calibrate); see attribot_rag/noise.py")
    table = data.setdefault("per_sqrt_token", {}).setdefault(nz["train"]["dtype"], {})
    table[model] = round(nz["train"]["per_sqrt_token_q"], 4)
    data.setdefault("examples", {})[f"{nz['train']['dtype']}/{model}"] = nz["train"]["examples"]
    NOISE_FILE.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"noise: {model} {nz['train']['dtype']} {table[model]} nats x sqrt(tokens) -> {NOISE_FILE}")


def calibrate(args: argparse.Namespace) -> None:
    """Grid search of the rule's thresholds on the *train* records; writes trust_calibration_<model>.json
    (and the model's noise coefficient into the package, from the train noise records)."""
    import itertools

    out = Path(args.out)
    write_noise(args.model, out)
    train = _pairs(args.model, "train", args.max_docs, out)
    if not train:
        raise SystemExit(f"no complete train records for {args.model}: run `run --split train` first")
    results = [(rec, ex, result_from(rec, ex)) for rec, ex in train]
    rows = []
    for values in itertools.product(*GRID.values()):
        rule = DecisionRule(**dict(zip(GRID, values)))
        m = evaluate(train, "rule", rule, prebuilt=results)
        rows.append((objective(m), dict(zip(GRID, values)), m))
    rows.sort(key=lambda r: -r[0])
    best = rows[0]
    # Ties are common on a small calibration set: take, per threshold, the median of the tied best
    # settings (not the first one found, which sits at a grid edge), if that setting is itself tied.
    tied = [r for o, r, _ in rows if o >= best[0] - 1e-12]
    order = {k: list(v) for k, v in GRID.items()}
    median = {k: sorted((r[k] for r in tied), key=order[k].index)[(len(tied) - 1) // 2] for k in GRID}
    if median in tied:
        best = next(r for r in rows if r[1] == median)
    summary = {"model": args.model, "train_examples": len(train) // len(CONDITIONS), "grid": GRID,
               "objective": objective.__doc__, "tied_best": len(tied),
               "best": {"objective": best[0], "rule": best[1], "metrics": best[2]},
               "default_rule": {"objective": objective(evaluate(train, "rule", DEFAULT_RULE, prebuilt=results)),
                                "rule": DEFAULT_RULE.__dict__},
               "top10": [{"objective": o, "rule": r} for o, r, _ in rows[:10]]}
    (out / f"trust_calibration_{args.model}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary["best"], indent=1, default=str), "\ndefault:", summary["default_rule"]["objective"])


def report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    for path in sorted(out.glob("trust_records_*.jsonl")):
        name = path.stem[len("trust_records_"):]  # the model, or model_strategy for another strategy
        train, dev = (_pairs(name, s, args.max_docs, out) for s in ("train", "dev"))
        if not dev:
            continue
        model, strategy = dev[0][0]["support"]["scored_by"], dev[0][0]["strategy"]
        # the judge's threshold comes from this model's train records (none: 0, i.e. "yes" likelier than "no");
        # the judge does not depend on the strategy, so another strategy's run takes the model's own
        thr = best_judge_threshold(train or (_pairs(model, "train", args.max_docs, out) if name != model else []))
        methods = {
            "attribot-rag default rule": evaluate(dev, "rule", DEFAULT_RULE),
            "LOO only, 0.1 nats and 5% (0.1 rule)": evaluate(dev, "rule", LOO_ONLY_RULE),
            "retriever (BM25 order, top-2 used)": evaluate(dev, "retriever"),
            f"prompted judge (log-odds > {thr:.2f}{', from train' if train else ''})":
                evaluate(dev, "judge", judge_threshold=thr),
        }
        if name != model:  # another strategy: the default's verdicts on the same questions, for a matched comparison
            asked = {(r["id"], r["condition"]) for r, _ in dev}
            base = [(r, e) for r, e in _pairs(model, "dev", args.max_docs, out) if (r["id"], r["condition"]) in asked]
            if len(base) == len(dev):
                own = methods.pop("attribot-rag default rule")
                methods = {f"default rule on `{base[0][0]['strategy']}` scores, same questions":
                           evaluate(base, "rule", DEFAULT_RULE), f"default rule on `{strategy}` scores": own,
                           **methods}
        recs = [r for r, _ in dev]
        costs = [r["support_seconds"] / r["seconds"] for r in recs if r.get("support_seconds") and r["seconds"]]
        summary = {
            "model": model, "strategy": strategy,
            # the spans' own labels say whether their scores are approximate (masked LOO, within kept documents)
            "approximate_loo": any(is_approximate(v[1]) or is_within_kept(v[1]) for r, _ in dev
                                   for v in [*r["documents"], *(x for row in r["sentences"] for x in row)]),
            "data": "HotpotQA dev (shared/data), yes/no questions skipped",
            "max_docs": args.max_docs, "examples": len(dev) // len(CONDITIONS),
            "calibration_examples": len(train) // len(CONDITIONS), "rule": DEFAULT_RULE.__dict__,
            "dtype": recs[0]["noise"]["dtype"], "noise": noise_summary(name, out),
            "methods": methods,
            # HotpotQA's question types: a comparison answer ("Who was older, X or Y?") is named in the
            # question, so the context barely changes its likelihood; a bridge answer is read from a paragraph
            "by_question_type": {t: evaluate([(r, e) for r, e in dev if e.get("type") == t], "rule", DEFAULT_RULE)
                                 for t in sorted({e.get("type") for _, e in dev if e.get("type")})},
            "support_auc": {"rule support score": support_auc(dev, DEFAULT_RULE),
                            "prompted judge log-odds": support_auc(dev, None)},
            "support_cost": {"median_share_of_attribution": statistics.median(costs) if costs else None,
                             "records": len(costs)},
            "machine_load_1m_median": statistics.median(
                r["machine"]["load_1m"] for r in recs if r["machine"].get("load_1m") is not None),
        }
        stem = f"trust_{name}"
        (out / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (out / f"{stem}.md").write_text(render_markdown(summary) + "\n")
        print(render_markdown(summary))
    if args.readme:
        write_readme(out)


README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = ("<!-- trust-table:start -->", "<!-- trust-table:end -->")


def readme_block(out: Path = OUT) -> str:
    """The README's trust block: every model's table, rendered from its committed JSON."""
    parts = [render_markdown(json.loads(p.read_text())) for p in sorted(out.glob("trust_*.json"))
             if not p.name.startswith(("trust_calibration_", "trust_records_", "trust_noise_"))]
    return "\n\n".join(parts) if parts else "*(no trust run committed yet)*"


def write_readme(out: Path = OUT, readme: Path = README) -> None:
    write_block(readme, MARKERS, readme_block(out))


GOALS = {"top_document_gold": ">= 0.95", "top_document_gold_when_cited": "",
         "top_sentence_gold": ">= 0.80", "used_precision": ">= 0.85",
         "used_recall": ">= 0.85", "flagged_unsupported_correct": "<= 0.05", "flagged_unsupported_madeup": ">= 0.95",
         "used_per_unflagged_madeup": "~0", "both_copies_used": ">= 0.90", "seconds_per_attribution": ""}


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def render_markdown(summary: dict) -> str:
    names = list(summary["methods"])
    cal = (f"thresholds chosen on {summary['calibration_examples']} of its train questions"
           if summary["calibration_examples"] else "the default rule as shipped (chosen on SmolLM2-135M's train runs)")
    strategy = summary.get("strategy", DEFAULT_STRATEGY)
    scores = "" if strategy == DEFAULT_STRATEGY else f", strategy `{strategy}`" + (
        " (approximate leave-one-out scores; the support and sufficiency passes exact)"
        if summary.get("approximate_loo") else "")
    lines = [f"**{summary['model']}** ({summary['dtype']}){scores}, {summary['examples']} HotpotQA dev questions x 3 "
             f"conditions, {summary['max_docs']} paragraphs; {cal}.",
             "", "| metric | goal | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key, goal in GOALS.items():
        lines.append(f"| {key.replace('_', ' ')} | {goal} | "
                     + " | ".join(_f(summary["methods"][m][key]) for m in names) + " |")
    nz = summary.get("noise")
    if nz and "dev" in nz:
        lines += ["", f"Noise: {nz['dev']['dtype']} vs float32 on {nz['dev']['examples']} dev questions: "
                      f"{100 * nz.get('dev_bounded_by_train_calibration', float('nan')):.1f}% of "
                      f"{nz['dev']['spans']} span differences within the train-calibrated bound "
                      f"({nz['train']['per_sqrt_token_q']:.3f} nats x sqrt(answer tokens)); largest difference "
                      f"{nz['dev']['max_difference']:.2f} nats."]
    types = summary.get("by_question_type") or {}
    if types:
        keys = ("flagged_unsupported_correct", "flagged_unsupported_madeup", "top_document_gold", "used_recall",
                "both_copies_used")
        lines += ["", "Default rule by HotpotQA question type:", "",
                  "| question type | questions | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
                  "|---|---|" + "---|" * len(keys)]
        lines += [f"| {t} | {m['n']['correct']} | " + " | ".join(_f(m[k]) for k in keys) + " |"
                  for t, m in types.items()]
    if any(m.endswith(", same questions") for m in names):
        lines += ["", "The same-questions column re-reads the default strategy's committed records: its seconds were "
                      "timed in that run (another time, load or machine), so compare seconds within one column."]
    auc, cost = summary.get("support_auc"), summary.get("support_cost")
    if auc:
        lines += ["", "Separability of correct from made-up answers (AUC, 1 = perfect, threshold-free): "
                      + ", ".join(f"{k} {_f(v)}" for k, v in auc.items()) + "."]
    if cost and cost.get("median_share_of_attribution") is not None:
        lines += [f"Cost of the support and sufficiency passes: a median "
                  f"{100 * cost['median_share_of_attribution']:.0f}% of the attribution time "
                  f"({cost['records']} records that time it apart)."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("run", "noise", "calibrate", "report"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--split", choices=tuple(SPLITS), default="dev")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--max-docs", type=int, default=5)
    ap.add_argument("--dtype", default=None, help="default: the library's (bf16 on CPUs with native bf16)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--readme", action="store_true", help="report: also rewrite the README's trust block")
    ap.add_argument("--noise-strategy", default="documents", help="noise: the strategy both dtypes run")
    ap.add_argument("--strategy", default="auto",
                    help="run: the attribution strategy (another than the default writes trust_records_MODEL_STRATEGY)")
    ap.add_argument("--out", default=str(OUT))
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    {"run": run, "noise": noise, "calibrate": calibrate, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
