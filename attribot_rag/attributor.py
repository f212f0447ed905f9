"""The attributor: strategies (exact, hierarchical, proxy, pruning, masked, rescoring) over the likelihood engine.

Data flows one way: sources -> sentences -> prompt token ids (:mod:`.prompt`) -> per-token
log-probs under each ablation (:mod:`.engine`) -> span scores (here) -> citations
(:mod:`.result`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import torch

from .engine import MODES as ENGINE_MODES
from .engine import Cost, LikelihoodEngine
from .errors import (
    ConfigError,
    ContextTooLongError,
    EmptyAnswerError,
    InputError,
    NonFiniteScoreError,
    NoSourcesError,
    is_count,
    is_finite_number,
)
from .generation import generate as greedy_generate
from .masked import MASKED, approximate_label, masked_logprobs
from .models import (
    DEFAULT_MODEL,
    LoadedModel,
    check_model_settings,
    describe_tokenizer_pair,
    load_model,
    models_locked,
)
from .noise import estimate as estimate_noise
from .overflow import OVERFLOW_POLICIES
from .prompt import Ablation, History, PromptBuilder, PromptTemplate, as_history
from .result import NOT_SCORED, AttributionResult, ContextSupport, SpanScore
from .spans import DEFAULT_MAX_SENTENCE_TOKENS, Sentence, Source, SourceLike, as_sources, split_source, split_text

logger = logging.getLogger("attribot_rag")

FULL, KEPT = "full", "kept"  # Strategy.sentence_context
SENTENCE_CONTEXTS = (FULL, KEPT)
WITHIN_KEPT = "LOO within kept documents"


def within_kept_label(model_name: str) -> str:
    """``SpanScore.scored_by`` of a sentence scored by LOO inside the kept documents only
    (``Strategy(sentence_context="kept")``): the model and the context it was scored in."""
    return f"{model_name} ({WITHIN_KEPT})"


def is_within_kept(scored_by: str) -> bool:
    """Whether a ``scored_by`` label marks a score computed in the pruned (kept-documents) context."""
    return scored_by.endswith(f"({WITHIN_KEPT})")


@dataclass(frozen=True)
class Strategy:
    """How to spend forward passes. Compose the AttriBoT tricks by setting fields.

    Args:
        level: ``"sentence"`` (flat LOO over every sentence), ``"hierarchical"`` (document
            LOO first, then sentences only inside the kept documents) or ``"document"``.
        keep_top_k: hierarchical: keep the k highest-scoring documents (``None`` = no cap).
        keep_share: hierarchical: keep the fewest top documents holding this share of the
            positive document score (``None`` = no share rule). Both ``None`` keeps all.
        proxy: score with the proxy model instead of the target.
        prune_top_k: cheap first, exact last: a first stage ranks sentences and the target rescores
            the best ``prune_top_k`` with exact LOO. The first stage is the proxy (``prune_top_k``
            implies ``proxy``), or, with ``engine_mode="masked"`` and ``proxy=False``, masked LOO on
            the target. Rescored sentences say ``scored_by=TARGET``. After a proxy the other sentences
            are not scored (the proxy's scale is not the target's); after masked LOO they keep their
            approximate score and label.
        rescore_documents: the same for documents: the target rescores the first stage's best
            ``rescore_documents`` documents with exact LOO, before the hierarchy picks the documents
            whose sentences it scores; the others keep their first-stage score and label.
        engine_mode: ``"batched"``, ``"serial"`` (one cached ablation at a time) or ``"exact"``, which
            compute exact LOO; or ``"masked"``: masked LOO (:mod:`.masked`), a fast approximation
            whose spans say ``scored_by="MODEL (masked LOO, approximate)"``, never exact.
        sentence_context: hierarchical: the prompt the sentence pass ablates. ``"full"`` (default):
            every source, so sentence scores are LOO in the full context. ``"kept"`` (pruned-context
            hierarchy, the AttriBoT reference's variant): only the documents the document pass
            kept (numbered as in the full prompt, as under any ablation), with the base likelihood
            recomputed on that prompt, reusing the full prompt's cache up to the first document left
            out; each sentence ablation then
            recomputes only the kept documents' tail. Sentence scores are LOO *within the kept
            documents* and say ``scored_by="MODEL (LOO within kept documents)"``; document scores and
            the context-support passes stay full-context. When every document is kept the two agree.
    """

    level: str = "hierarchical"
    keep_top_k: int | None = 3
    keep_share: float | None = None
    proxy: bool = False
    prune_top_k: int | None = None
    engine_mode: str = "batched"
    name: str = "custom"
    sentence_context: str = "full"
    rescore_documents: int | None = None

    def __post_init__(self) -> None:
        if self.level not in ("sentence", "hierarchical", "document"):
            raise ConfigError(f"unknown level {self.level!r}: use 'sentence', 'hierarchical' or 'document'")
        for key in ("keep_top_k", "prune_top_k", "rescore_documents"):
            k = getattr(self, key)
            if k is not None and not is_count(k, 1):
                raise ConfigError(f"{key} must be an int >= 1 (or None), got {k!r}")
        if self.keep_share is not None and not (is_finite_number(self.keep_share) and 0 < self.keep_share <= 1):
            raise ConfigError(f"keep_share must be a number in (0, 1] (or None), got {self.keep_share!r}")
        if self.prune_top_k is not None and self.level == "document":
            raise ConfigError("prune_top_k shortlists sentences for the target to rescore, and level='document' "
                              "scores none: use level='hierarchical' or 'sentence' with it")
        if self.engine_mode not in (*ENGINE_MODES, MASKED):
            raise ConfigError(f"unknown engine_mode {self.engine_mode!r}: use one of "
                              f"{', '.join((*ENGINE_MODES, MASKED))}")
        if self.rescore_documents is not None and self.level == "sentence":
            raise ConfigError("rescore_documents rescores the document pass, and level='sentence' runs none: use "
                              "level='hierarchical' or 'document' with it")
        if self.sentence_context not in SENTENCE_CONTEXTS:
            raise ConfigError(f"unknown sentence_context {self.sentence_context!r}: use "
                              f"{' or '.join(map(repr, SENTENCE_CONTEXTS))}")
        if self.sentence_context == KEPT and self.level != "hierarchical":
            raise ConfigError("sentence_context='kept' scores sentences inside the documents the document pass "
                              "kept: use it with level='hierarchical'")
        if self.sentence_context == KEPT and self.engine_mode == MASKED:
            raise ConfigError("sentence_context='kept' with engine_mode='masked' is refused: masked LOO re-runs "
                              "only the answer, so a pruned context saves it nothing; use one or the other")

    @property
    def uses_proxy(self) -> bool:
        """Whether the proxy scores: ``proxy=True``, or rescoring (``prune_top_k``, ``rescore_documents``)
        whose first stage is not masked LOO on the target."""
        rescores = self.prune_top_k is not None or self.rescore_documents is not None
        return self.proxy or (rescores and self.engine_mode != MASKED)

    @property
    def rescore_mode(self) -> str:
        """The engine mode of the target's rescoring passes: always exact LOO (masked LOO is not)."""
        return "batched" if self.engine_mode == MASKED else self.engine_mode


PRESETS: dict[str, Strategy] = {
    "exact": Strategy(level="sentence", engine_mode="exact", name="exact"),
    "serial": Strategy(level="sentence", engine_mode="serial", name="serial"),
    "batched": Strategy(level="sentence", name="batched"),
    "hierarchical": Strategy(level="hierarchical", keep_top_k=3, name="hierarchical"),
    "documents": Strategy(level="document", name="documents"),
    "proxy": Strategy(level="sentence", proxy=True, name="proxy"),
    "proxy-hierarchical": Strategy(level="hierarchical", keep_top_k=3, proxy=True, name="proxy-hierarchical"),
    "proxy-prune": Strategy(level="hierarchical", keep_top_k=3, prune_top_k=8, name="proxy-prune"),
    # approximate (masked LOO): every document and every sentence, each re-running only the answer
    "masked": Strategy(level="hierarchical", keep_top_k=None, engine_mode=MASKED, name="masked"),
    # sentence LOO within the top-3 documents only (documents: full-context LOO)
    "hierarchical-pruned": Strategy(level="hierarchical", keep_top_k=3, sentence_context=KEPT,
                                    name="hierarchical-pruned"),
    # masked LOO over every document and sentence, then exact target LOO of the best 8 sentences
    "masked-rescore": Strategy(level="hierarchical", keep_top_k=None, engine_mode=MASKED, prune_top_k=8,
                               name="masked-rescore"),
}


def resolve_strategy(strategy: str | Strategy, has_proxy: bool) -> Strategy:
    """A preset name or a :class:`Strategy`; ``"auto"`` picks the recommended default.

    ``"auto"`` is ``"hierarchical"`` on the target, with or without a proxy: in the faithfulness
    benchmark (``benchmarks/results/faithfulness.md``) it was faster and more faithful to exact
    LOO than proxy pruning with a SmolLM2 proxy for a Qwen2.5-0.5B target, so a proxy is used
    only when a proxy strategy is asked for.
    """
    if isinstance(strategy, Strategy):
        s = strategy
    elif strategy == "auto":
        s = PRESETS["hierarchical"]
    elif strategy in PRESETS:
        s = PRESETS[strategy]
    else:
        raise ConfigError(f"unknown strategy {strategy!r}: use 'auto', {', '.join(PRESETS)}, or a Strategy")
    if s.uses_proxy and not has_proxy:
        raise ConfigError(f"strategy {s.name!r} needs a proxy model: pass proxy=... to the Attributor")
    return s


def check_proxy_used(strategy: str | Strategy, proxy: object | None) -> None:
    """For one-strategy runs (the CLI, batch jobs): refuse a proxy the strategy would load and never use.

    An :class:`Attributor` may hold an unused proxy (``attribute(strategy=...)`` can switch per call);
    a run with one fixed strategy would only pay its load time and memory.
    """
    if proxy is None:
        return
    s = resolve_strategy(strategy, has_proxy=True)
    if not s.uses_proxy:
        raise ConfigError(
            f"strategy {s.name!r} does not use the proxy {proxy!r} ('auto' is 'hierarchical' on the target): "
            "drop the proxy, or choose a proxy strategy ('proxy-prune', 'proxy-hierarchical' or 'proxy')"
        )


def check_settings(
    target=DEFAULT_MODEL,
    proxy=None,
    *,
    strategy: str | Strategy = "auto",
    template: PromptTemplate | None = None,
    device: str | None = None,
    dtype=None,
    max_batch_tokens: int | None = None,
    max_batch_size: int | None = None,
    max_sentence_tokens: int | None = DEFAULT_MAX_SENTENCE_TOKENS,
    overflow: str = "error",
    progress: bool = False,
) -> Strategy:
    """Check :class:`Attributor` arguments without loading anything; return the resolved strategy.

    What :class:`Attributor` and :class:`~attribot_rag.AttributorConfig` both run first, so a
    bad setting fails the same way, before any weights load. An unknown model *name* is only
    found out when it is loaded.

    Raises:
        ConfigError: a model of the wrong type, ``device``/``dtype`` with a model object, an
            unknown strategy (or a proxy strategy without a proxy), a template that is not a
            :class:`PromptTemplate`, a batch cap or sentence budget below 1, an unknown overflow
            policy, a non-bool ``progress``.
        DeviceError: an unknown dtype or a device this machine does not have.
    """
    check_model_settings(target, device, dtype, "model")
    if proxy is not None:
        check_model_settings(proxy, device, dtype, "proxy")
    try:
        strat = resolve_strategy(strategy, has_proxy=proxy is not None)
    except TypeError as exc:  # an unhashable value, looked up in the presets
        raise ConfigError(f"strategy={strategy!r}: pass a preset name or a Strategy") from exc
    if template is not None and not isinstance(template, PromptTemplate):
        raise ConfigError(f"template={type(template).__name__}: pass an attribot_rag.PromptTemplate")
    for key, value in (("max_batch_tokens", max_batch_tokens), ("max_batch_size", max_batch_size),
                       ("max_sentence_tokens", max_sentence_tokens)):
        if value is not None and not is_count(value, 1):
            raise ConfigError(f"{key} must be an int >= 1 (or None for the default), got {value!r}")
    if not isinstance(overflow, str) or overflow not in OVERFLOW_POLICIES:
        raise ConfigError(f"unknown overflow policy {overflow!r}: use one of {', '.join(OVERFLOW_POLICIES)}")
    if not isinstance(progress, bool):
        raise ConfigError(f"progress must be True or False, got {progress!r}")
    return strat


@dataclass
class _Scores:
    """Per-span token-level drops from one model, reduced per answer sentence."""

    total: torch.Tensor  # [n_ablations]
    per_sentence: torch.Tensor  # [n_ablations, n_answer_sentences]
    answer_tokens: list[int]  # [n_answer_sentences]: answer tokens each answer sentence owns


@dataclass(frozen=True)
class Encoded:
    """A prompt's and an answer's token ids, as one model sees them."""

    prompt_ids: list[int]
    answer_ids: list[int]


class _Scorer:
    """One model with its prompt builder and engine; scores ablations of one answer."""

    def __init__(self, loaded: LoadedModel, template: PromptTemplate, engine: LikelihoodEngine, strict: bool):
        self.loaded = loaded
        self.builder = PromptBuilder(loaded.tokenizer, template)
        self.engine = engine
        self.strict = strict  # a proxy must encode the answer text exactly

    @property
    def name(self) -> str:
        return self.loaded.name

    def score(
        self, question: str, history: History, sources, answer: str, answer_sentences: list[Sentence],
        ablations: Sequence[Ablation], mode: str, cost: Cost, desc: str, memo: dict,
        keeps: Sequence[Collection[int]] | None = None, context: Collection[int] | None = None,
    ) -> _Scores:
        """Drops of the answer's log-likelihood under each ablation (or, with ``keeps``, under each
        prompt holding only those sources: ``keeps=[()]`` is the prompt with no documents).

        ``context`` (source indices): ablate inside the prompt holding only those sources, against
        that prompt's own likelihood (the pruned-context hierarchy); ``None``: the full prompt.
        """
        if context is not None:
            return self._score_within(question, history, sources, answer, answer_sentences, ablations, mode, cost,
                                      desc, memo, tuple(sorted(context)))
        # The full prompt and the answer are the same for every pass of one call: encode them once.
        prompt = memo.get(("prompt", id(self)))
        if prompt is None:
            prompt = memo[("prompt", id(self))] = self.builder.encode_prompt(question, sources, history=history)
        enc = memo.get(("answer", id(self)))
        if enc is None:
            enc = memo[("answer", id(self))] = self.builder.encode_answer(answer, strict=self.strict)
        window = self.loaded.context_window
        if window is not None and len(prompt) + len(enc.ids) > window:
            raise ContextTooLongError(
                f"prompt ({len(prompt)} tokens) + answer ({len(enc.ids)}) exceed {self.name}'s context "
                f"window of {window} tokens: pass fewer or shorter sources, or use a longer-context model"
            )
        if mode == MASKED and keeps is None:  # approximate: spans hidden from attention, see .masked
            full, ablated = masked_logprobs(self, question, history, sources, prompt, enc.ids, ablations, cost,
                                            memo, desc)
        else:
            mode = "batched" if mode == MASKED else mode  # masked LOO cannot drop whole sources: keep passes
            if keeps is not None:
                variants = [self.builder.encode_prompt(question, sources, None, history, keep=k) for k in keeps]
            else:
                variants = [self.builder.encode_prompt(question, sources, a, history) for a in ablations]
            # The full prompt's pass (and KV cache) is shared by every pass of this attribution call.
            if mode != "exact" and id(self) not in memo:
                memo[id(self)] = self.engine.prefill(prompt, enc.ids, cost=cost)
            full, ablated = self.engine.answer_logprobs(
                prompt, variants, enc.ids, mode=mode, cost=cost, prefill=memo.get(id(self)), desc=desc
            )
        return self._drops(full, ablated, answer, answer_sentences, enc, desc)

    def _score_within(self, question, history, sources, answer, answer_sentences, ablations, mode, cost, desc,
                      memo, context: tuple[int, ...]) -> _Scores:
        """:meth:`score` in the prompt holding only the ``context`` sources (exact LOO, always).

        Its base pass reuses the full prompt's KV cache up to the first source left out, and is
        kept in ``memo`` for the call's other passes in that context (first stage, then rescoring).
        """
        if mode == MASKED:  # Strategy refuses it; a guard for direct callers
            raise ConfigError("masked LOO cannot score inside a pruned context: use an exact engine mode")
        if any(a[0] not in context for a in ablations):
            raise InputError("an ablation names a source outside the pruned context it is scored in")
        enc = memo.get(("answer", id(self)))
        if enc is None:
            enc = memo[("answer", id(self))] = self.builder.encode_answer(answer, strict=self.strict)
        key = ("kept prompt", id(self), context)
        prompt = memo.get(key)
        if prompt is None:
            prompt = memo[key] = self.builder.encode_prompt(question, sources, None, history, keep=context)
        variants = [self.builder.encode_prompt(question, sources, a, history, keep=context) for a in ablations]
        prefill = None
        if mode != "exact":
            prefill = memo.get(("kept prefill", id(self), context))
            if prefill is None:
                prefill = memo[("kept prefill", id(self), context)] = self.engine.prefill(
                    prompt, enc.ids, cost=cost, reuse=memo.get(id(self)))
        full, ablated = self.engine.answer_logprobs(prompt, variants, enc.ids, mode=mode, cost=cost, prefill=prefill,
                                                    desc=desc)
        return self._drops(full, ablated, answer, answer_sentences, enc, desc)

    def _drops(self, full: torch.Tensor, ablated: torch.Tensor, answer: str, answer_sentences: list[Sentence],
               enc, desc: str) -> _Scores:
        """Per-ablation drops ``full - ablated``, summed over the answer and per answer sentence."""
        if not (torch.isfinite(full).all() and torch.isfinite(ablated).all()):
            raise NonFiniteScoreError(
                f"{self.name} produced NaN or infinite log-probabilities for the answer ({desc}), so no score "
                "can be trusted: this is what fp16 overflow or a broken checkpoint does; load it in bf16 or fp32"
            )
        drops = full[None, :] - ablated  # [n_ablations, n_tokens]
        # Each answer token belongs to the answer sentence holding its first non-space char: byte-level
        # tokens carry the space before a word (" The"), which sits in the previous sentence's segment.
        seg_ends = torch.tensor([s.seg_end for s in answer_sentences])
        starts = torch.tensor([_first_visible(answer, a, b) for a, b in enc.offsets])
        owner = torch.clamp(torch.searchsorted(seg_ends, starts, right=True), max=len(answer_sentences) - 1)
        per_sentence = torch.zeros(len(ablated), len(answer_sentences)).index_add_(1, owner, drops)
        tokens = torch.bincount(owner, minlength=len(answer_sentences)).tolist()
        return _Scores(total=drops.sum(dim=1), per_sentence=per_sentence, answer_tokens=tokens)


def _first_visible(text: str, start: int, end: int) -> int:
    """Offset of the first non-whitespace character of ``text[start:end]`` (``start`` if there is none)."""
    piece = text[start:end]
    stripped = piece.lstrip()
    return start + len(piece) - len(stripped) if stripped else start


def _as_loaded(model, device, dtype, what: str = "model") -> LoadedModel:
    # Moving the caller's model object would change it under them: refused, not ignored.
    check_model_settings(model, device, dtype, what)
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        m, tok = model
        return LoadedModel(name=getattr(m.config, "_name_or_path", None) or type(m).__name__, model=m, tokenizer=tok)
    return load_model(model, device=device, dtype=dtype)


class Attributor:
    """Cites which retrieved sources (and sentences) an answer used, by leave-one-out.

    Args:
        target: the model whose answer is attributed: a short name (default
            ``"smollm2-135m"``), a local folder / ``.gguf`` / Hub id, a :class:`LoadedModel`, or
            a ``(model, tokenizer)`` pair.
        proxy: an optional smaller model (same forms). With the target's tokenizer it reuses
            the token ids; otherwise it re-tokenizes the answer text, which also lets it
            attribute answers written by API models.
        strategy: a preset name (``"auto"``, ``"exact"``, ``"serial"``, ``"batched"``,
            ``"hierarchical"``, ``"documents"``, ``"proxy"``, ``"proxy-hierarchical"``,
            ``"proxy-prune"``) or a :class:`Strategy`.
        template: how the prompt is rendered (:class:`PromptTemplate`); it must match how the
            answer was generated for target scores to be the model's own.
        max_batch_tokens / max_batch_size: the engine's memory caps (see :class:`LikelihoodEngine`).
        max_sentence_tokens: sentences longer than this (cl100k tokens) are cut by budget.
        overflow: a prompt longer than a model's context window raises
            :class:`ContextTooLongError` (``"error"``, the default), or drops sources until it
            fits: the last retrieved first (``"drop_last"``) or the lowest ``metadata["score"]``
            first (``"drop_lowest_score"``); the result lists them in ``dropped_sources``.
        progress: tqdm progress bars over ablation batches.

    Example:
        >>> attributor = Attributor("smollm2-135m")
        >>> result = attributor.attribute("Who wrote Hamlet?", ["Hamlet is a play by Shakespeare."])
        >>> result.citations(top_k=3)
    """

    def __init__(
        self,
        target=DEFAULT_MODEL,
        proxy=None,
        *,
        strategy: str | Strategy = "auto",
        template: PromptTemplate | None = None,
        device: str | None = None,
        dtype=None,
        max_batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        max_sentence_tokens: int | None = DEFAULT_MAX_SENTENCE_TOKENS,
        overflow: str = "error",
        progress: bool = False,
    ) -> None:
        check_settings(target, proxy, strategy=strategy, template=template, device=device, dtype=dtype,
                       max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                       max_sentence_tokens=max_sentence_tokens, overflow=overflow, progress=progress)
        self.overflow = overflow
        self.template = template or PromptTemplate()
        self.max_sentence_tokens = max_sentence_tokens
        engine_kw = dict(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size, progress=progress)
        t = _as_loaded(target, device, dtype)
        self.target = _Scorer(t, self.template, LikelihoodEngine(t.model, **engine_kw), strict=False)
        self.proxy: _Scorer | None = None
        self.tokenizer_path: str | None = None
        if proxy is not None:
            p = _as_loaded(proxy, device, dtype, "proxy")
            self.tokenizer_path = describe_tokenizer_pair(t, p)
            logger.info(
                "proxy %s %s", p.name,
                "shares the target's tokenizer: token ids are reused" if self.tokenizer_path == "shared"
                else "has a different tokenizer: the answer text is re-tokenized and must round-trip exactly",
            )
            # A proxy sharing the tokenizer reads the same ids; any other must encode the text.
            strict = self.tokenizer_path != "shared"
            self.proxy = _Scorer(p, self.template, LikelihoodEngine(p.model, **engine_kw), strict=strict)
        self.strategy = resolve_strategy(strategy, self.proxy is not None)
        if self.proxy is not None and not self.strategy.uses_proxy:
            logger.info("strategy %r does not use the proxy %s: pass strategy='proxy-prune' (or another proxy "
                        "strategy) to use it", self.strategy.name, self.proxy.name)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the process-wide lock of each model this attributor runs (:func:`~attribot_rag.models.model_lock`).

        :meth:`attribute` holds it for the whole call (and :mod:`~attribot_rag.generation` while it
        decodes), so work on one shared model runs one call at a time across threads, LangChain,
        LlamaIndex and your own code that takes it too. The locks are reentrant: holding it around
        several calls of your own is allowed.
        """
        return models_locked(self.target.loaded, None if self.proxy is None else self.proxy.loaded)

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, question: str, sources: Iterable[SourceLike], max_new_tokens: int = 128, *,
                 history=None) -> str:
        """Greedy answer from the target model, with the same prompt attribution uses."""
        srcs = self._prepare(sources)
        return self._generate(question, srcs, max_new_tokens, as_history(history))[0]

    def _generate(self, question: str, sources, max_new_tokens: int, history: History = ()) -> tuple[str, float]:
        if not is_count(max_new_tokens, 1):  # before any encoding: a bad value costs nothing
            raise ConfigError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        start = time.perf_counter()
        loaded = self.target.loaded
        ids = self.target.builder.encode_prompt(question, sources, history=history)
        answer = greedy_generate(loaded, ids, max_new_tokens, advice="pass fewer or shorter sources").text
        if not answer:
            raise EmptyAnswerError(f"{loaded.name} generated an empty answer: pass the answer text explicitly")
        return answer, time.perf_counter() - start

    # ------------------------------------------------------------------ tokens
    def encode(self, question: str, sources: Iterable[SourceLike], answer: str, *, role: str = "target",
               ablate: Ablation | None = None, history=None) -> Encoded:
        """The token ids attribution feeds ``role``'s model (``"target"`` or ``"proxy"``).

        ``ablate`` = ``(document, sentence or None)`` gives the prompt with that span removed.
        The answer's ids are those it is scored on (for a proxy with another tokenizer: the
        answer text re-encoded by the proxy's tokenizer).
        """
        if role not in ("target", "proxy"):
            raise ConfigError(f"unknown role {role!r}: use 'target' or 'proxy'")
        scorer = self.target if role == "target" else self.proxy
        if scorer is None:
            raise ConfigError("this attributor has no proxy model: pass proxy=... or use role='target'")
        srcs = self._prepare(sources)
        if ablate is not None:
            d, j = ablate
            if not (isinstance(d, int) and 0 <= d < len(srcs)) or not (
                j is None or isinstance(j, int) and 0 <= j < len(srcs[d].sentences)
            ):
                raise InputError(f"ablate={ablate!r} names no span: use (document, sentence or None) with "
                                 f"0 <= document < {len(srcs)} and 0 <= sentence < that document's sentence count")
        prompt = scorer.builder.encode_prompt(question, srcs, ablate, as_history(history))
        answer_ids = scorer.builder.encode_answer(answer, strict=scorer.strict).ids
        return Encoded(prompt_ids=list(prompt), answer_ids=list(answer_ids))

    # ------------------------------------------------------------------ attribution
    def _prepare(self, sources: Iterable[SourceLike]):
        srcs = as_sources(sources)
        if not srcs:
            raise NoSourcesError("no sources to attribute to: pass the retrieved documents")
        return [split_source(s, self.max_sentence_tokens) for s in srcs]

    def attribute(
        self,
        question: str,
        sources: Iterable[SourceLike],
        answer: str | None = None,
        *,
        strategy: str | Strategy | None = None,
        max_new_tokens: int = 128,
        overflow: str | None = None,
        history=None,
        context_support: bool = True,
    ) -> AttributionResult:
        """Attribute ``answer`` (generated by the target when ``None``) to ``sources``.

        Sources may be :class:`~attribot_rag.spans.Source` objects, strings, or dicts with
        ``id``/``text`` (or pre-split ``sentences``); other dict keys become metadata.
        ``overflow`` overrides the attributor's policy for prompts longer than the context window.
        ``history``: earlier chat turns (``[{"role": "user"|"assistant", "content": str}, ...]``),
        rendered before the turn holding the sources and the question; context, never ablated.
        ``context_support=False`` skips the context-support passes (the answer without any source,
        and with each source alone: about one more prompt's worth of tokens): for ranking only.
        The result's ``support`` is then ``None``, so ``supported`` is ``None`` and the verdicts
        fall back to the leave-one-out thresholds alone (no lift or sufficiency checks).

        Thread-safe: the call holds :meth:`locked` (its models' process-wide locks), so calls on
        one attributor, or on attributors sharing a model, run one at a time.
        """
        with self.locked():
            return self._attribute(question, sources, answer, strategy, max_new_tokens, overflow, history,
                                   context_support)

    def _attribute(self, question, sources, answer, strategy, max_new_tokens, overflow, history,
                   context_support: bool = True) -> AttributionResult:
        started = time.perf_counter()
        if not isinstance(question, str):
            raise InputError(f"the question must be a str, not {type(question).__name__}: pass the question's text")
        if not question.strip():
            raise ConfigError("the question is empty: pass the user's question text")
        if answer is not None and not isinstance(answer, str):
            raise InputError(f"answer must be a str (or None to generate one), not {type(answer).__name__}: "
                             "pass the answer's text (e.g. message.content)")
        if answer is not None and not answer.strip():
            raise EmptyAnswerError("the answer is empty: pass the answer text, or None to generate one")
        if not isinstance(context_support, bool):
            raise ConfigError(f"context_support must be True or False, got {context_support!r}")
        hist = as_history(history)
        strat = self.strategy if strategy is None else resolve_strategy(strategy, self.proxy is not None)
        srcs = self._prepare(sources)
        memo: dict = {}  # per-call state only: the attributor is shared across threads
        srcs, dropped = self._fit(question, hist, srcs, answer, max_new_tokens, strat, overflow or self.overflow,
                                  memo)
        gen_seconds = None
        if answer is None:
            answer, gen_seconds = self._generate(question, srcs, max_new_tokens, hist)
        answer_sentences = split_text(answer, None)
        costs: dict[str, Cost] = {}
        docs, sents = self._run(strat, question, hist, srcs, answer, answer_sentences, costs, memo)
        support = None
        if context_support:
            support = self._support(strat, question, hist, srcs, answer, answer_sentences, costs, memo)
        timing = {
            "total_seconds": time.perf_counter() - started,
            "generation_seconds": gen_seconds,
            "models": {name: c.to_dict() for name, c in costs.items()},
            "context_support": memo.get("support_cost", Cost()).to_dict(),  # none without the support passes
            "passes": {desc: c.to_dict() for desc, c in memo.get("passes", {}).items()},
            "proxy_tokenizer": self.tokenizer_path if strat.uses_proxy else None,
        }
        return AttributionResult(
            question=question, answer=answer, sources=srcs, answer_sentences=answer_sentences,
            document_scores=docs, sentence_scores=sents, strategy=strat.name, timing=timing,
            dropped_sources=dropped, history=[{"role": r, "content": c} for r, c in hist],
            support=support, noise=estimate_noise(self.target.loaded.name, self.target.loaded.model.dtype),
        )

    async def aattribute(self, question: str, sources: Iterable[SourceLike], answer: str | None = None,
                         **kwargs) -> AttributionResult:
        """:meth:`attribute` in a worker thread, so the event loop is never blocked."""
        return await asyncio.to_thread(self.attribute, question, sources, answer, **kwargs)

    def _fit(self, question: str, history: History, srcs: list[Source], answer: str | None, max_new_tokens: int,
             strat: Strategy, policy: str, memo: dict) -> tuple[list[Source], list[Source]]:
        """Apply the overflow policy: drop sources until every model's prompt fits its window.

        Also refuses a question, answer or history that is not valid Unicode (before any tokenizer sees it).
        The encoded answer and the kept sources' prompt are left in ``memo`` for scoring.
        """
        from .overflow import fit_sources
        from .spans import check_request

        check_request(question, answer, history)
        if policy not in OVERFLOW_POLICIES:
            raise ConfigError(f"unknown overflow policy {policy!r}: use one of {', '.join(OVERFLOW_POLICIES)}")
        scorers = [self.target] + ([self.proxy] if strat.uses_proxy and self.proxy is not None else [])
        return fit_sources(scorers, question, history, srcs, answer, max_new_tokens, policy, memo)

    def _pass(self, scorer: _Scorer, strat: Strategy, question, history, srcs, answer, answer_sentences,
              ablations: list[Ablation], costs: dict[str, Cost], memo: dict, desc: str, *, mode: str | None = None,
              context: Collection[int] | None = None) -> dict[Ablation, SpanScore]:
        """Score ``ablations`` with one model; returns a SpanScore per ablation.

        ``mode``: the engine mode (default the strategy's); ``context``: score inside the prompt
        holding only those sources (the pruned-context hierarchy). The pass's own work is added
        to ``memo["passes"][desc]`` (``timing["passes"]``).
        """
        if not ablations:
            return {}
        mode = strat.engine_mode if mode is None else mode
        cost = costs.setdefault(self._cost_key(scorer), Cost())
        before = Cost(cost.forward_passes, cost.forward_tokens, cost.seconds)
        scores = scorer.score(question, history, srcs, answer, answer_sentences, ablations, mode, cost,
                              desc, memo, context=context)
        spent = memo.setdefault("passes", {}).setdefault(desc, Cost())
        for field_name, value in vars(cost - before).items():
            setattr(spent, field_name, getattr(spent, field_name) + value)
        if mode == MASKED:
            label = approximate_label(scorer.name)
        elif context is not None:
            label = within_kept_label(scorer.name)
        else:
            label = scorer.name
        return {
            a: SpanScore(a[0], a[1], float(scores.total[i]), scores.per_sentence[i].tolist(), label)
            for i, a in enumerate(ablations)
        }

    def _support(self, strat: Strategy, question, history, srcs, answer, answer_sentences, costs: dict[str, Cost],
                 memo: dict) -> ContextSupport:
        """How much the context raises the answer's likelihood: all sources vs none (``lift``), and
        each source alone vs none (``sufficiency``, which sees evidence that leave-one-out cannot
        when another source repeats it). Scored by the target; the prompts are short but for the full one.
        """
        scorer = self.target
        # counted apart from the LOO passes (timing["context_support"]): LOO costs stay comparable
        cost = memo["support_cost"] = Cost()
        keeps: list[tuple[int, ...]] = [()] + [(d,) for d in range(len(srcs))]
        scores = scorer.score(question, history, srcs, answer, answer_sentences, [], strat.engine_mode, cost,
                              "context support", memo, keeps=keeps)
        # drop(v) = log p(answer | all) - log p(answer | v): lift = drop(none); alone(d) - none = drop(none) - drop(d)
        none = scores.per_sentence[0]
        return ContextSupport(
            lift=none.tolist(),
            sufficiency=[(none - scores.per_sentence[1 + d]).tolist() for d in range(len(srcs))],
            answer_tokens=scores.answer_tokens,
            scored_by=scorer.name,
        )

    def _cost_key(self, scorer: _Scorer) -> str:
        """``timing["models"]`` key: the model's name, ``"NAME (proxy)"`` when the proxy has the target's name."""
        if scorer is self.proxy and scorer.name == self.target.name:
            return f"{scorer.name} (proxy)"
        return scorer.name

    def _run(self, strat: Strategy, question, history, srcs, answer, answer_sentences, costs, memo: dict):
        first = self.proxy if strat.uses_proxy else self.target
        args = (strat, question, history, srcs, answer, answer_sentences)
        n_ans = len(answer_sentences)
        all_sents = [(d, k) for d, s in enumerate(srcs) for k in range(len(s.sentences))]

        doc_scores: dict[Ablation, SpanScore] = {}
        if strat.level in ("hierarchical", "document"):
            doc_scores = self._pass(first, *args, [(d, None) for d in range(len(srcs))], costs, memo, "documents")
        if strat.rescore_documents is not None and doc_scores:
            # Cheap first, exact last: the target's exact LOO replaces the first stage's best documents'
            # scores; the others keep the first stage's, and their scored_by says which stage that was.
            shortlist = sorted(doc_scores, key=lambda a: -doc_scores[a].score)[: strat.rescore_documents]
            doc_scores.update(self._pass(self.target, *args, sorted(shortlist), costs, memo, "rescoring documents",
                                         mode=strat.rescore_mode))
        context: set[int] | None = None
        if strat.level == "document":
            chosen: list[Ablation] = []
        elif strat.level == "hierarchical":
            keep = _keep_documents([doc_scores[(d, None)].score for d in range(len(srcs))], strat)
            chosen = [(d, k) for d, k in all_sents if d in keep]
            if strat.sentence_context == KEPT and len(keep) < len(srcs):  # all kept: the full context itself
                context = keep
        else:
            chosen = all_sents
        sent_scores = self._pass(first, *args, chosen, costs, memo, "sentences", context=context)

        if strat.prune_top_k is not None:
            shortlist = sorted(sent_scores, key=lambda a: -sent_scores[a].score)[: strat.prune_top_k]
            rescored = self._pass(self.target, *args, sorted(shortlist), costs, memo, "rescoring",
                                  mode=strat.rescore_mode, context=context)
            if first is self.target:
                # A masked first stage: the same model's nats, approximate. The others keep that score and its
                # label; the shortlist reports the exact scores (scored_by = the target).
                sent_scores = {**sent_scores, **rescored}
            else:
                # After a proxy, sentences report only the target's scores (the proxy's scale is not the
                # target's); document scores stay the proxy's, and their scored_by says so.
                sent_scores = rescored

        def span(a: Ablation, table: dict[Ablation, SpanScore]) -> SpanScore:
            return table.get(a) or SpanScore(a[0], a[1], 0.0, [0.0] * n_ans, NOT_SCORED)

        sentences = [[span((d, k), sent_scores) for k in range(len(s.sentences))] for d, s in enumerate(srcs)]
        if doc_scores:
            documents = [doc_scores[(d, None)] for d in range(len(srcs))]
        else:  # no document pass: a document's score is the sum of its sentences' scores
            documents = [
                SpanScore(d, None, sum(x.score for x in row),
                          [sum(x.answer_sentence_scores[j] for x in row) for j in range(n_ans)], "sum of sentences")
                for d, row in enumerate(sentences)
            ]
        return documents, sentences


def _keep_documents(scores: list[float], strat: Strategy) -> set[int]:
    """Documents whose sentences the hierarchical strategy scores."""
    order = sorted(range(len(scores)), key=lambda d: -scores[d])
    if strat.keep_share is not None:
        total = sum(max(s, 0.0) for s in scores)
        kept, acc = [], 0.0
        for d in order:
            # Documents at or below zero add nothing to the share (and rounding may leave acc a hair short).
            if total > 0 and (acc >= strat.keep_share * total or scores[d] <= 0):
                break
            kept.append(d)
            acc += max(scores[d], 0.0)
        order = kept
    if strat.keep_top_k is not None:
        order = order[: strat.keep_top_k]
    return set(order)

