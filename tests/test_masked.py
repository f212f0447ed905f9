"""Masked LOO (issue #17): span token ranges, the cached masked engine path, the approximate strategy.

Tiny random models in fp32. Masked LOO is an approximation of LOO: these tests check that the
engine computes *its* definition exactly (against an uncached reference built by hand), never
that it equals exact LOO.
"""

import math
from pathlib import Path

import pytest
import torch

from attribot_rag import Attributor, ConfigError, Cost, LikelihoodEngine, PromptBuilder, Source, Strategy
from attribot_rag.errors import InputError
from attribot_rag.masked import APPROXIMATE, approximate_label, is_approximate
from attribot_rag.spans import split_source

QUESTION = "Who built the tower?"
ANSWER = "Gustave Eiffel built the tower in 1889. Paris is in France."


def _layout(tok, sources, history=()):
    srcs = [split_source(s) for s in sources]
    pb = PromptBuilder(tok)
    return srcs, pb, pb.encode_layout(QUESTION, srcs, history), pb.encode_answer(ANSWER).ids


def _gemma3(vocab: int, window: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=window,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=2048)
    return Gemma3ForCausalLM(cfg).eval().float()


def _model(kind: str, vocab: int, prompt_len: int):
    from attribot_rag.testing import tiny_model

    window = prompt_len // 2  # the window ends inside the prompt: sliding layers see only its tail
    if kind == "llama-sdpa":
        return tiny_model(vocab), None
    if kind == "llama-eager":
        model = tiny_model(vocab)
        model.set_attn_implementation("eager")
        return model, None
    if kind == "qwen2-sliding":
        return tiny_model(vocab, sliding_window=window), window
    if kind == "gemma3-hybrid":
        return _gemma3(vocab, window), window
    raise AssertionError(kind)


def _reference(model, ids: list[int], n: int, hidden: list[tuple[int, int]], window: int | None,
               hybrid: bool) -> torch.Tensor:
    """One plain, uncached forward of prompt + answer whose answer rows carry the mask, built by hand.

    The rows that predict answer tokens (the prompt's last position and the answer but its last)
    cannot see the hidden positions; every other row is plain causal attention.
    """
    t = len(ids)
    first = t - n - 1
    pos = torch.arange(t)
    causal = pos[None, :] <= pos[:, None]
    for start, end in hidden:
        causal[first:, start:end] = False
    minimum = torch.finfo(torch.float32).min

    def additive(allowed):
        return torch.zeros(1, 1, t, t).masked_fill_(~allowed, minimum)

    mask = additive(causal)
    if window is not None:
        sliding = additive(causal & (pos[:, None] - pos[None, :] < window))
        mask = {"full_attention": mask, "sliding_attention": sliding}
        if not hybrid:
            mask["full_attention"] = sliding  # unused: every layer slides
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), attention_mask=mask).logits[0, first : t - 1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids[-n:])[:, None])[:, 0]


# ---------------------------------------------------------------- span token ranges
@pytest.mark.parametrize("chat", [True, False])
def test_span_token_ranges_cover_exactly_the_span_text(sources, chat):
    from attribot_rag.testing import tiny_tokenizer

    tok = tiny_tokenizer(chat=chat)
    sources = [*sources, Source("odd", "  Leading space. A <|im_end|> marker inside.\n\nLast one here.  ")]
    history = (("user", "Hi there."), ("assistant", "Hello."))
    srcs, pb, layout, _ = _layout(tok, sources, history)
    _check_layout(tok, pb, srcs, layout, history)


def _check_layout(tok, pb, srcs, layout, history):
    assert layout.ids == pb.encode_prompt(QUESTION, srcs, history=history)
    template = pb.template
    for d, src in enumerate(srcs):
        a, b = layout.ranges[(d, None)]
        title = f" {src.title}" if src.title else ""
        block = template.document.format(index=d + 1, title=title, text=src.text.strip())
        assert tok.decode(layout.ids[a:b]).strip() == block.strip()
        prev = None
        for k, sent in enumerate(src.sentences):
            s, e = layout.ranges[(d, k)]
            assert a <= s < e <= b, (d, k)
            assert tok.decode(layout.ids[s:e]).strip() == sent.text
            if prev is not None:
                assert s == prev, "a document's sentences tile its text tokens"
            prev = e
        assert prev == b, "the last sentence ends the document block"


def test_span_token_ranges_on_a_real_tokenizer(smollm2):
    """SmolLM2's tokenizer (pulled and converted on first use, as CI does), then every other converted
    model folder in the cache (Qwen2.5, Gemma3 where present): their tokenizers alone are loaded."""
    from transformers import AutoTokenizer

    from attribot_rag.models import cache_home

    loaded = Path(smollm2.tokenizer.name_or_path).resolve()
    folders = sorted(p.parent for p in (cache_home() / "converted").glob("*/tokenizer.json")
                     if p.parent.resolve() != loaded)  # SmolLM2's is the fixture's, not loaded twice
    tokenizers = [smollm2.tokenizer, *(AutoTokenizer.from_pretrained(f) for f in folders)]
    sources = [
        Source("a", "Paris is the capital of France. Berlin is in Germany.", {"title": "Capitals"}),
        Source("b", "  Café au lait — 3.5 m. long. Größe: 12 cm!\n\nNeue Zeile <|im_end|> hier. Fin."),
        Source("c", "def f(x):\n    return x + 1\n# ends. Then another line."),
    ]
    for tok in tokenizers:
        history = (("user", "Earlier question?"), ("assistant", "Earlier."))
        srcs, pb, layout, _ = _layout(tok, sources, history)
        _check_layout(tok, pb, srcs, layout, history)


def test_span_layout_needs_templates_that_hold_each_field_once(tok, sources):
    from attribot_rag import PromptTemplate

    srcs = [split_source(s) for s in sources]
    pb = PromptBuilder(tok, PromptTemplate(document="[{index}] {text} / {text}"))
    with pytest.raises(ConfigError, match="exactly once"):
        pb.encode_layout(QUESTION, srcs)


# ---------------------------------------------------------------- the engine path
@pytest.mark.parametrize("packed", [True, False])
def test_nothing_masked_equals_the_full_pass(tiny, tok, sources, packed):
    _, _, layout, answer = _layout(tok, sources)
    engine = LikelihoodEngine(tiny.model, max_batch_size=4, max_batch_tokens=10**6, masked_packed=packed)
    pre = engine.prefill(layout.ids, answer)
    got = engine.masked_answer_logprobs(pre, [[], [], [(3, 3)]])  # empty masks and an empty range
    exact_full, _ = LikelihoodEngine(tiny.model, mode="exact").answer_logprobs(layout.ids, [], answer)
    assert got.shape == (3, len(answer))
    for row in got:
        assert torch.allclose(row, pre.logprobs, atol=1e-5)
        assert torch.allclose(row, exact_full, atol=1e-5)


KINDS = ["llama-sdpa", "llama-eager", "qwen2-sliding", "gemma3-hybrid"]


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_cached_batched_masked_path_equals_an_uncached_reference(tok, sources, kind, packed):
    _, _, layout, answer = _layout(tok, sources)
    model, window = _model(kind, len(tok), len(layout.ids))
    masks = [[], *([r] for r in layout.ranges.values()), [layout.ranges[(0, None)], layout.ranges[(2, 0)]]]
    engine = LikelihoodEngine(model, max_batch_size=16, max_batch_tokens=10**6, max_packed_tokens=10**6,
                              masked_packed=packed)
    cost = Cost()
    pre = engine.prefill(layout.ids, answer, cost=cost)
    got = engine.masked_answer_logprobs(pre, masks, cost=cost)
    ids = layout.ids + list(answer)
    ref = torch.stack([_reference(model, ids, len(answer), m, window, kind == "gemma3-hybrid") for m in masks])
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    # the masks matter (the model is random, but hiding spans changes what the answer reads)
    assert (ref[1:] - ref[0]).abs().max() > 1e-3
    # one prefill (+ a prompt-only pass where sliding layers cannot be sliced) + one masked pass
    assert cost.forward_passes == (3 if window is not None else 2)


@pytest.mark.parametrize("kw", [{"max_batch_size": 1}, {"max_batch_size": 3}, {"max_batch_tokens": 1},
                                {"max_batch_size": 64, "max_batch_tokens": 10**6}])
def test_batching_masked_rows_changes_nothing(tiny, tok, sources, kw):
    _, _, layout, answer = _layout(tok, sources)
    masks = [[r] for r in layout.ranges.values()] + [[layout.ranges[(1, 0)], layout.ranges[(1, 2)]]]
    one = LikelihoodEngine(tiny.model, max_batch_size=1, masked_packed=False)
    pre = one.prefill(layout.ids, answer)
    expected = one.masked_answer_logprobs(pre, masks)
    engine = LikelihoodEngine(tiny.model, masked_packed=False, **kw)
    seen = []
    real = engine._forward

    def spy(input_ids, cost, cache=None, **k):
        seen.append(input_ids.shape[0])
        return real(input_ids, cost, cache=cache, **k)

    engine._forward = spy
    got = engine.masked_answer_logprobs(pre, masks)
    assert torch.allclose(got, expected, atol=1e-5)
    assert sum(seen) == len(masks) and max(seen) <= engine.max_batch_size
    assert len(seen) == math.ceil(len(masks) / max(1, min(engine.max_batch_size, engine.max_batch_tokens
                                                           // (len(layout.ids) + len(answer)))))


@pytest.mark.parametrize("kind", KINDS)
def test_packed_rows_equal_batch_rows_and_the_reference_however_chunked(tok, sources, kind):
    """Packed rows (one sequence per pass, block-diagonal mask, repeated positions) = batch rows = reference."""
    _, _, layout, answer = _layout(tok, sources)
    model, window = _model(kind, len(tok), len(layout.ids))
    masks = [[], *([r] for r in layout.ranges.values()), [layout.ranges[(1, 0)], layout.ranges[(1, 2)]]]
    batched = LikelihoodEngine(model, max_batch_size=4, max_batch_tokens=10**6, masked_packed=False)
    pre = batched.prefill(layout.ids, answer)
    expected = batched.masked_answer_logprobs(pre, masks)
    ids = layout.ids + list(answer)
    ref = torch.stack([_reference(model, ids, len(answer), m, window, kind == "gemma3-hybrid") for m in masks])
    assert torch.allclose(expected, ref, atol=1e-5)
    n, p = len(answer), len(layout.ids) - 1
    for kw, per_pass in [({"max_packed_tokens": 10**6, "max_batch_tokens": 10**6}, len(masks)),  # all rows
                         ({"max_packed_tokens": 1}, 1), ({"max_batch_tokens": 1, "max_packed_tokens": 1}, 1),
                         ({"max_packed_tokens": 3 * n, "max_batch_tokens": 10**6}, 3),
                         ({"max_packed_tokens": 10**6, "max_batch_tokens": p + 2 * n}, 2),
                         # a prompt longer than max_batch_tokens: packing still bounded by max_packed_tokens
                         ({"max_packed_tokens": 4 * n, "max_batch_tokens": p // 2}, 4)]:
        engine = LikelihoodEngine(model, **kw)
        shapes = []
        real = engine._forward

        def spy(input_ids, cost, cache=None, _real=real, _shapes=shapes, **k):
            _shapes.append(tuple(input_ids.shape))
            return _real(input_ids, cost, cache=cache, **k)

        engine._forward = spy
        got = engine.masked_answer_logprobs(pre, masks)
        assert torch.allclose(got, expected, atol=1e-5), (kw, (got - expected).abs().max())
        assert torch.allclose(got, ref, atol=1e-5), (kw, (got - ref).abs().max())
        extra = 1 if window is not None else 0  # the prompt-only pass that sliding layers need
        assert len(shapes) == extra + math.ceil(len(masks) / per_pass), kw
        assert all(s[0] == 1 and s[1] <= per_pass * n for s in shapes[extra:]), (kw, shapes)


def test_masked_rows_share_the_prompt_cache_without_copying_it(tiny, tok, sources):
    _, _, layout, answer = _layout(tok, sources)
    engine = LikelihoodEngine(tiny.model, max_batch_size=8, max_batch_tokens=10**6)
    pre = engine.prefill(layout.ids, answer)
    p = len(layout.ids) - 1
    base = engine._masked_base(pre, p, Cost())
    for (_, keys, values, length), layer in zip(base, pre.cache.layers):
        assert length == p and keys.shape[2] == p
        assert keys.data_ptr() == layer.keys.data_ptr() and values.data_ptr() == layer.values.data_ptr()
    before = [layer.keys.shape for layer in pre.cache.layers]
    engine.masked_answer_logprobs(pre, [[layout.ranges[(0, None)]]] * 3)
    assert [layer.keys.shape for layer in pre.cache.layers] == before  # the prefill's cache is left as it was


def test_masked_path_refuses_what_it_cannot_do(tiny, tok, sources):
    _, _, layout, answer = _layout(tok, sources)
    engine = LikelihoodEngine(tiny.model)
    pre = engine.prefill(layout.ids, answer)
    p = len(layout.ids)
    for bad in ([(0, p)], [(5, 3)], [(-1, 2)], [(0, 1, 2)], ["ab"]):
        with pytest.raises(InputError, match="mask 0 holds"):
            engine.masked_answer_logprobs(pre, [bad])
    assert engine.masked_answer_logprobs(pre, []).shape == (0, len(answer))

    class FlashConfig:
        _attn_implementation = "flash_attention_2"

    class Flash(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = tiny.model, FlashConfig()

        def forward(self, input_ids=None, cache=None, **kw):  # pragma: no cover - never reached
            return self.inner(input_ids=input_ids, cache=cache, **kw)

    with pytest.raises(ConfigError, match="4D mask"):
        LikelihoodEngine(Flash()).masked_answer_logprobs(pre, [[(0, 1)]])


# ---------------------------------------------------------------- the strategy
def test_masked_strategy_runs_end_to_end_and_says_it_is_approximate(tiny, sources):
    result = Attributor(tiny, strategy="masked").attribute(QUESTION, sources, ANSWER)
    assert result.strategy == "masked"
    label = approximate_label("tiny")
    assert APPROXIMATE in label and is_approximate(label) and not is_approximate("tiny")
    spans = result.document_scores + [s for row in result.sentence_scores for s in row]
    assert len(spans) == len(sources) + sum(len(s.sentences) for s in result.sources)
    assert all(s.scored_by == label and math.isfinite(s.score) for s in spans)  # every span scored, approximately
    d = result.to_dict()
    assert d["strategy"] == "masked"
    assert all(is_approximate(src["scored_by"]) for src in d["sources"])
    assert all(is_approximate(s["scored_by"]) for src in d["sources"] for s in src["sentences"])
    assert all(is_approximate(c["scored_by"]) for c in d["citations"])
    # one full pass + one masked pass per document/sentence batch: far fewer tokens than exact LOO
    masked_tokens = result.timing["models"]["tiny"]["forward_tokens"]
    exact = Attributor(tiny, strategy=Strategy(level="hierarchical", keep_top_k=None, engine_mode="exact"))
    exact_tokens = exact.attribute(QUESTION, sources, ANSWER).timing["models"]["tiny"]["forward_tokens"]
    assert masked_tokens < exact_tokens / 3


def test_masked_scores_are_not_exact_loo(tiny, sources):
    """Context tokens after a span still saw it: masked LOO differs from LOO and never claims to be it."""
    masked = Attributor(tiny, strategy="masked").attribute(QUESTION, sources, ANSWER)
    exact = Attributor(tiny, strategy=Strategy(level="hierarchical", keep_top_k=None, engine_mode="exact",
                                               name="exact-all")).attribute(QUESTION, sources, ANSWER)
    pairs = [(m, e) for rm, re_ in zip(masked.sentence_scores, exact.sentence_scores) for m, e in zip(rm, re_)]
    pairs += list(zip(masked.document_scores, exact.document_scores))
    assert max(abs(m.score - e.score) for m, e in pairs) > 1e-3
    assert all(m.scored_by != e.scored_by and e.scored_by == "tiny" for m, e in pairs)


@pytest.mark.parametrize("level", ["document", "sentence", "hierarchical"])
def test_masked_engine_mode_composes_with_levels(tiny, sources, level):
    strat = Strategy(level=level, keep_top_k=1, engine_mode="masked", name=f"masked-{level}")
    result = Attributor(tiny, strategy=strat).attribute(QUESTION, sources, ANSWER)
    scored = [s for row in result.sentence_scores for s in row if s.scored]
    assert all(is_approximate(s.scored_by) for s in scored)
    if level == "document":
        assert not scored and all(is_approximate(d.scored_by) for d in result.document_scores)
    if level == "hierarchical":
        assert len({s.source_index for s in scored}) == 1
    assert result.support is not None and result.support.scored_by == "tiny"  # the support passes stay exact


def test_masked_with_rescoring_rescores_exactly_on_the_target():
    # the rescoring pass is exact (tests/test_rescore.py); masked LOO on the target is the first stage
    strat = Strategy(level="hierarchical", prune_top_k=4, engine_mode="masked")
    assert not strat.uses_proxy and strat.rescore_mode == "batched"
    with pytest.raises(ConfigError, match="unknown engine_mode"):
        Strategy(engine_mode="maskd")
