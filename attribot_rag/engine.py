"""Likelihood engine: per-token log-probs of an answer under a prompt and its ablations.

Three modes compute the same numbers at different cost:

* ``"exact"``   every sequence is its own uncached forward pass (the reference);
* ``"serial"``  one ablation at a time, reusing the KV cache of the prefix it shares with the
  full prompt (the published AttriBoT reference's way, batch size 1);
* ``"batched"`` ablations sorted by where they diverge from the full prompt and grouped so
  that several run in one forward pass over their shared cached prefix, under a memory cap.

The full prompt's forward pass fills a transformers :class:`~transformers.DynamicCache`; each
batch gets a new cache holding the first ``p`` positions of it, repeated over the batch. Rows
are right-padded, so no attention mask is needed: causal attention never lets a real token see
the padding after it.

:meth:`LikelihoodEngine.masked_answer_logprobs` is an approximation, not a fourth way to the same
numbers (masked LOO): it re-runs only the answer against the full prompt's cache with a span's
positions hidden from attention, so context tokens after the span keep what they read from it.
Its ablations are *packed*: many rows' answer tokens in one sequence (batch size 1) after the
cached prompt, with a block-diagonal mask between rows and each row's original position ids.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import AttribotError, ConfigError, InputError

MODES = ("exact", "serial", "batched")
# Attention implementations that take a custom 4D additive mask per batch row.
MASKABLE_ATTENTION = ("sdpa", "eager")


class OutOfMemory(AttribotError, MemoryError):
    """Even a single ablation does not fit in the device's memory."""


@dataclass
class Cost:
    """Work done by one model: forward passes, token positions computed, wall seconds."""

    forward_passes: int = 0
    forward_tokens: int = 0
    seconds: float = 0.0

    def __sub__(self, other: Cost) -> Cost:
        return Cost(
            self.forward_passes - other.forward_passes,
            self.forward_tokens - other.forward_tokens,
            self.seconds - other.seconds,
        )

    def to_dict(self) -> dict[str, float]:
        return {"forward_passes": self.forward_passes, "forward_tokens": self.forward_tokens, "seconds": self.seconds}


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Prefill:
    """The full prompt + answer's forward pass: answer log-probs and the KV cache to reuse."""

    ids: tuple[int, ...]
    n_answer: int
    logprobs: torch.Tensor
    cache: object


@dataclass(frozen=True)
class _Row:
    index: int  # position in the caller's variant list
    prefix: int  # cached positions this row can reuse
    ids: list[int]  # the whole sequence (prompt + answer)


class LikelihoodEngine:
    """Scores answer tokens under many prompts with one causal LM.

    Args:
        model: a transformers causal LM (``model(input_ids, past_key_values=..., logits_to_keep=...)``).
        mode: ``"batched"`` (default), ``"serial"`` or ``"exact"``; see the module docstring.
        max_batch_tokens: cap on ``batch size x (cached prefix + new tokens)`` for one batched
            pass, which bounds KV-cache and activation memory. A single row longer than the cap
            still runs, alone. Default: 32768 on CUDA, 4096 on CPU.
        max_batch_size: most ablations in one pass. Default: 16 on CUDA, 1 on CPU, where
            batching was measured to be no faster than one ablation at a time (CPU matmuls are
            already compute-bound at one row; batched attention over long cached prefixes was
            up to 2.5x slower on a 2-core box).
        max_recompute: a row joins a batch only while the batch's padded work stays within
            ``1 + max_recompute`` times what its rows would cost one by one (rows in a batch
            share the *shortest* prefix, so mixing far-apart ablations recomputes tokens).
        progress: show a tqdm bar over batches.
        masked_packed: masked LOO (:meth:`masked_answer_logprobs`) packs its rows into one
            sequence per pass (default) instead of running them as batch rows. On a CPU (one
            thread, SmolLM2-135M, ~2,000-token prompts, 40-54 sentence rows) the masked sentence
            pass took 0.7-1.9 s packed against 4.2-4.8 s as batch rows (the rows' tiny passes
            were bound by reading the weights and copying the prompt's cache once per row; a packed
            pass is bound by its attention over the prompt). On CUDA packing is the default by
            reasoning, not measurement: one pass and one cache copy per chunk instead of one pass
            per ``max_batch_size`` rows, each row with its own copy.
        max_packed_tokens: most new tokens (rows x answer tokens) in one packed masked pass: it
            bounds the mask and attention scores (``tokens x (prompt + tokens)``) and the
            attention computed between rows and thrown away. Default: 1024 on CUDA, 256 on CPU
            (256 and 512 measured alike on a CPU, larger chunks slower).
    """

    def __init__(
        self,
        model,
        *,
        mode: str = "batched",
        max_batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        max_recompute: float = 0.25,
        progress: bool = False,
        masked_packed: bool = True,
        max_packed_tokens: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown engine mode {mode!r}: choose one of {', '.join(MODES)}")
        on_cuda = next(model.parameters()).device.type == "cuda" if hasattr(model, "parameters") else False
        max_batch_tokens = (32768 if on_cuda else 4096) if max_batch_tokens is None else max_batch_tokens
        max_batch_size = (16 if on_cuda else 1) if max_batch_size is None else max_batch_size
        max_packed_tokens = (1024 if on_cuda else 256) if max_packed_tokens is None else max_packed_tokens
        if max_batch_tokens < 1 or max_batch_size < 1 or max_packed_tokens < 1 or max_recompute < 0:
            raise ConfigError("max_batch_tokens, max_batch_size and max_packed_tokens must be >= 1, max_recompute "
                              ">= 0")
        self.model = model
        self.mode = mode
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_recompute = max_recompute
        self.progress = progress
        self.masked_packed = masked_packed
        self.max_packed_tokens = max_packed_tokens
        self.cost = Cost()
        self._lock = threading.Lock()
        # transformers >= 5.24 names the cache argument `cache`; earlier 5.x `past_key_values`.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _forward(self, input_ids: torch.Tensor, cost: Cost, cache=None, **kwargs):
        """One forward pass, counted in ``cost`` and the engine's total. ``cache`` is extended."""
        start = time.perf_counter()
        if cache is not None:
            kwargs[self._cache_arg] = cache
        out = self.model(input_ids=input_ids.to(self.device), use_cache=cache is not None, **kwargs)
        keep = kwargs.get("logits_to_keep")
        if keep and out.logits.shape[1] > keep:  # a model that ignores logits_to_keep returns every position
            out.logits = out.logits[:, -keep:]
        took = time.perf_counter() - start
        with self._lock:
            for c in (cost, self.cost):
                c.forward_passes += 1
                c.forward_tokens += input_ids.numel()
                c.seconds += took
        return out

    @staticmethod
    def _gather(logits: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
        """log p(targets) from the logits that predict them (one row, [n, vocab])."""
        idx = torch.tensor(targets, device=logits.device)[:, None]
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, idx)[:, 0].cpu()

    @torch.inference_mode()
    def answer_logprobs(
        self,
        prompt: Sequence[int],
        variants: Sequence[Sequence[int]],
        answer: Sequence[int],
        *,
        mode: str | None = None,
        cost: Cost | None = None,
        prefill: Prefill | None = None,
        desc: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of each answer token after ``prompt`` and after each variant prompt.

        ``mode`` overrides the engine's mode for this call; ``cost`` (if given) accumulates this
        call's work; ``prefill`` (from :meth:`prefill`, same prompt and answer) skips the full
        forward pass, e.g. across the document and sentence passes of hierarchical attribution.
        Returns ``(full [n_answer], ablated [len(variants), n_answer])``, float32 on CPU.
        """
        mode = mode or self.mode
        if mode not in MODES:
            raise ConfigError(f"unknown engine mode {mode!r}: choose one of {', '.join(MODES)}")
        cost = cost if cost is not None else Cost()
        answer = list(answer)
        _check_nonempty(prompt, answer)
        if any(len(v) == 0 for v in variants):
            raise InputError("a variant prompt is empty: the answer's first token needs a token before it")
        n = len(answer)
        full = list(prompt) + answer
        ablated = torch.empty(len(variants), n, dtype=torch.float32)
        if mode == "exact":
            base = self._uncached(full, n, cost)
            for i, v in enumerate(self._iter(variants, desc)):
                ablated[i] = self._uncached(list(v) + answer, n, cost)
            return base, ablated

        if prefill is None or prefill.ids != tuple(full) or prefill.n_answer != n:
            prefill = self.prefill(prompt, answer, cost=cost)
        base, cache = prefill.logprobs, prefill.cache
        rows = []
        for i, v in enumerate(variants):
            ids = list(v) + answer
            prefix = min(common_prefix_len(full, ids), len(v) - 1, len(prompt) - 1)
            rows.append(_Row(i, max(prefix, 0), ids))
        max_size = 1 if mode == "serial" else self.max_batch_size
        for batch in self._iter(self._batches(rows, max_size), desc):
            for row, lp in zip(batch, self._run_halving(batch, cache, full, answer, cost)):
                ablated[row.index] = lp
        return base, ablated

    def _run_halving(self, batch: list[_Row], cache, full, answer, cost: Cost) -> list[torch.Tensor]:
        """Run a batch; on out-of-memory, retry each half, down to one row."""
        return _halving(lambda rows: self._run_batch(rows, cache, full, answer, cost), batch, list.__add__,
                        f"ablation of a {len(batch[0].ids)}-token sequence")

    @torch.inference_mode()
    def prefill(self, prompt: Sequence[int], answer: Sequence[int], *, cost: Cost | None = None,
                reuse: Prefill | None = None) -> Prefill:
        """Run the full prompt + answer once; the result can be passed to :meth:`answer_logprobs`.

        ``reuse``: another sequence's prefill (e.g. the full prompt's, when this prompt leaves some
        sources out): the positions this sequence shares with it are taken from its KV cache (left
        unchanged), and only the rest is run.
        """
        from transformers import DynamicCache

        _check_nonempty(prompt, answer)
        cost = cost if cost is not None else Cost()
        full = list(prompt) + list(answer)
        n = len(answer)
        p = 0 if reuse is None else min(common_prefix_len(reuse.ids, full), len(prompt) - 1)
        if p > 0:
            cache = self._prefix_cache(reuse.cache, list(reuse.ids), p, 1, cost)
        else:
            cache = DynamicCache(config=self.model.config)
        out = self._forward(torch.tensor([full[p:]]), cost, cache=cache, logits_to_keep=n + 1)
        return Prefill(tuple(full), n, self._gather(out.logits[0, :n], answer), cache)

    # ------------------------------------------------------------------ masked LOO (approximate)
    @torch.inference_mode()
    def masked_answer_logprobs(
        self,
        prefill: Prefill,
        masks: Sequence[Sequence[tuple[int, int]]],
        *,
        cost: Cost | None = None,
        desc: str | None = None,
        packed: bool | None = None,
    ) -> torch.Tensor:
        """Answer log-probs with spans of the prompt hidden from attention (masked LOO, approximate).

        ``prefill`` is the full prompt + answer's pass (:meth:`prefill`); ``masks[i]`` lists the
        ``(start, end)`` token ranges of the prompt that row ``i`` hides. The prompt's KV cache
        is reused up to its second-to-last token; for each row, the last prompt token and the
        answer are run again at their original positions, attending to every cached position
        except the row's hidden ones, and causally to the row's own new tokens. Only those tokens
        see the ablation: the context tokens after a hidden span keep what they read from it, so
        this is **not** leave-one-out, only a cheap first stage approximating it (an empty mask
        gives the full pass's log-probs).

        ``packed`` (default: the engine's ``masked_packed``, on) puts the rows' new tokens one
        after another in a *single* sequence after the cached prompt (batch size 1, one copy of
        the prompt's cache per pass, a block-diagonal mask between rows, position ids repeating
        per row); ``packed=False`` runs them as batch rows, each its own copy of the cache (up to
        ``max_batch_size`` rows and ``rows x (prompt + answer) <= max_batch_tokens`` per pass).
        Packed chunks hold ``R`` rows of ``n`` new tokens with ``prompt + R x n <= max_batch_tokens``
        (the cap on one sequence's cached + new tokens; dropped when the prompt alone leaves no room
        for one row, which breaks it anyway) and ``R x n <= max_packed_tokens`` (which bounds the
        ``R x n x (prompt + R x n)`` mask and attention scores, and the attention computed between
        rows and thrown away), one row always. Both compute the same numbers (to
        ~1e-5 nats in fp32; in bf16 each carries its own rounding, like any two passes).

        Returns ``[len(masks), n_answer]`` float32 log-probs on CPU. Needs a model whose attention
        takes a 4D mask (``sdpa`` or ``eager``) and whose cache layers are transformers' dynamic
        full or sliding-window layers; otherwise :class:`ConfigError`.
        """
        cost = cost if cost is not None else Cost()
        n = prefill.n_answer
        full = list(prefill.ids)
        p = len(full) - n - 1  # cached positions: the prompt but its last token
        rows = _masked_rows(masks, p)
        out = torch.empty(len(rows), n, dtype=torch.float32)
        if not rows:
            return out
        self._check_maskable()
        base = self._masked_base(prefill, p, cost)
        packed = self.masked_packed if packed is None else packed
        if packed:
            room = self.max_batch_tokens - p
            # A prompt that alone leaves no room under max_batch_tokens breaks that cap with one row already
            # (its prefill ran anyway): then only max_packed_tokens bounds a pass, not one row per pass.
            per_pass = max(1, (min(room, self.max_packed_tokens) if room >= n else self.max_packed_tokens) // n)
        else:
            per_pass = max(1, min(self.max_batch_size, self.max_batch_tokens // (p + n + 1)))
        chunks = [list(range(i, min(i + per_pass, len(rows)))) for i in range(0, len(rows), per_pass)]
        for chunk in self._iter(chunks, desc or "masked ablations"):
            out[chunk] = self._masked_halving(base, full, p, [rows[i] for i in chunk], cost, packed)
        return out

    def _check_maskable(self) -> None:
        impl = getattr(getattr(self.model, "config", None), "_attn_implementation", None) or "eager"
        if impl not in MASKABLE_ATTENTION:
            raise ConfigError(
                f"masked LOO needs attention that takes a custom 4D mask ({' or '.join(MASKABLE_ATTENTION)}); this "
                f"model runs {impl!r}: load it with attn_implementation='sdpa', or use an exact strategy"
            )

    def _masked_base(self, prefill: Prefill, p: int, cost: Cost) -> list[tuple[type, torch.Tensor, torch.Tensor, int]]:
        """The cache of prompt positions ``[0, p)`` as ``(layer type, keys, values, length)`` per layer.

        Full-attention layers are sliced out of the prefill's cache (views, no copy); a cache with
        sliding-window layers (which keep only the window's tail) is recomputed on ``[0, p)``.
        """
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        if p == 0:
            return []
        cache = prefill.cache
        kinds = {type(layer) for layer in getattr(cache, "layers", [None])}
        if not kinds <= {DynamicLayer, DynamicSlidingWindowLayer}:
            names = ", ".join(sorted(k.__name__ for k in kinds))
            raise ConfigError(f"masked LOO needs transformers' dynamic full or sliding-window cache layers; this "
                              f"model's cache has {names}: use an exact strategy")
        if kinds != {DynamicLayer}:
            cache = DynamicCache(config=self.model.config)
            self._forward(torch.tensor([list(prefill.ids[:p])]), cost, cache=cache, logits_to_keep=1)
        return [(type(layer), layer.keys[:, :, :p], layer.values[:, :, :p], p) for layer in cache.layers]

    def _masked_halving(self, base, full: list[int], p: int, rows: list[list[tuple[int, int]]],
                        cost: Cost, packed: bool = False) -> torch.Tensor:
        """Run masked rows; on out-of-memory, retry each half, down to one row."""
        run = self._masked_packed if packed else self._masked_batch
        return _halving(lambda part: run(base, full, p, part, cost), rows, lambda a, b: torch.cat([a, b]),
                        f"masked ablation of a {len(full)}-token sequence")

    def _masked_cache(self, base, b: int):
        """A cache over the ``base`` prompt positions for ``b`` rows (expanded views, no copy)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if base:
            kinds = [type(layer) for layer in cache.layers]
            if kinds != [kind for kind, *_ in base]:
                raise ConfigError("masked LOO could not rebuild this model's cache layer by layer: use an exact "
                                  "strategy")
            for layer, (_, keys, values, length) in zip(cache.layers, base):
                # The rows share the prompt's keys/values: expanded views, materialised only by the
                # layer's own concatenation with the new tokens.
                layer.lazy_initialization(keys, values)
                layer.keys, layer.values = keys.expand(b, -1, -1, -1), values.expand(b, -1, -1, -1)
                if hasattr(layer, "cumulative_length"):
                    layer.cumulative_length = length
        return cache

    def _masked_packed(self, base, full: list[int], p: int, rows: list[list[tuple[int, int]]],
                       cost: Cost) -> torch.Tensor:
        """The rows' new tokens packed into one sequence after the cached prompt (batch size 1).

        Row ``r``'s tokens sit at sequence slots ``[r n, (r + 1) n)`` but carry the original
        positions ``p .. p + n - 1``; each attends to the cached prompt except the row's hidden
        ranges, and causally to the row's own new tokens only (block-diagonal), so each row
        computes what it would alone. Sliding-window layers also drop keys whose *position* is a
        window or more behind the query's; their cached keys start at position
        ``p - len(keys)`` (the window's tail kept by the layer).
        """
        device, r = self.device, len(rows)
        tokens = full[p:-1]  # the prompt's last token and the answer but its last: they predict the answer
        n = len(tokens)
        t = r * n
        cache = self._masked_cache(base, 1)
        hidden = torch.zeros(r, p, dtype=torch.bool, device=device)
        for i, row in enumerate(rows):
            for start, end in row:
                hidden[i, start:end] = True
        q = torch.arange(p, p + n, device=device).repeat(r)  # positions of the packed tokens
        q_row = torch.arange(r, device=device).repeat_interleave(n)
        new_allowed = (q_row[:, None] == q_row[None, :]) & (q[None, :] <= q[:, None])  # [t, t]
        visible = ~hidden[q_row]  # [t, p]: each packed token's row's prompt positions
        dtype = next(self.model.parameters()).dtype
        kinds = {"full_attention": (0, None)}  # layer type -> (first cached position, window)
        for i, layer in enumerate(cache.layers):
            if getattr(layer, "is_sliding", False):
                kinds["sliding_attention"] = (p - (base[i][1].shape[2] if base else 0), layer.sliding_window)
                break
        masks: dict[str, torch.Tensor] = {}
        for kind, (offset, window) in kinds.items():
            allowed = torch.cat([visible[:, offset:], new_allowed], dim=1)  # [t, p - offset + t]
            if window is not None:
                k = torch.cat([torch.arange(offset, p, device=device), q])
                allowed &= q[:, None] - k[None, :] < window
            mask = torch.zeros(1, 1, t, allowed.shape[1], dtype=dtype, device=device)
            masks[kind] = mask.masked_fill_(~allowed[None, None], torch.finfo(dtype).min)
        attention_mask: torch.Tensor | dict[str, torch.Tensor] = masks["full_attention"]
        # As in _masked_batch: while every position is within the window of every later one (and
        # the sliding layers then keep the whole prompt), the sliding layers' mask is the full one.
        if "sliding_attention" in kinds and p + n > kinds["sliding_attention"][1]:
            attention_mask = self._mask_mapping(masks)
        out = self._forward(torch.tensor([tokens * r]), cost, cache=cache, attention_mask=attention_mask,
                            position_ids=q[None], logits_to_keep=t)
        logits = out.logits[0, -t:].reshape(r, n, -1)
        idx = torch.tensor(full[p + 1:], device=logits.device)[None, :, None].expand(r, -1, -1)
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, idx)[..., 0].cpu()

    def _masked_batch(self, base, full: list[int], p: int, rows: list[list[tuple[int, int]]],
                      cost: Cost) -> torch.Tensor:
        device, b = self.device, len(rows)
        tokens = full[p:-1]  # the prompt's last token and the answer but its last: they predict the answer
        n = len(tokens)
        cache = self._masked_cache(base, b)
        hidden = torch.zeros(b, p + n, dtype=torch.bool, device=device)
        for i, row in enumerate(rows):
            for start, end in row:
                hidden[i, start:end] = True
        q = torch.arange(p, p + n, device=device)
        dtype = next(self.model.parameters()).dtype
        sliding = [layer for layer in cache.layers if getattr(layer, "is_sliding", False)]
        sizes = {"full_attention": (p + n, 0, None)}
        if sliding:
            sizes["sliding_attention"] = (*sliding[0].get_mask_sizes(n), sliding[0].sliding_window)
        masks: dict[str, torch.Tensor] = {}
        for kind, (length, offset, window) in sizes.items():
            k = torch.arange(offset, offset + length, device=device)
            allowed = (k[None, :] <= q[:, None])[None] & ~hidden[:, k][:, None, :]  # [b, n, length]
            if window is not None:
                allowed &= (q[:, None] - k[None, :] < window)[None]
            mask = torch.zeros(b, 1, n, length, dtype=dtype, device=device)
            masks[kind] = mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        attention_mask: torch.Tensor | dict[str, torch.Tensor] = masks["full_attention"]
        # When the whole sequence fits in the window the sliding layers' mask is the full one; otherwise
        # the model must take a mask per layer type.
        if sliding and p + n > sizes["sliding_attention"][2]:
            attention_mask = self._mask_mapping(masks)
        position_ids = q[None].expand(b, -1)
        out = self._forward(torch.tensor([tokens] * b), cost, cache=cache, attention_mask=attention_mask,
                            position_ids=position_ids, logits_to_keep=n)
        idx = torch.tensor(full[p + 1:], device=out.logits.device)[None, :, None].expand(b, -1, -1)
        return torch.log_softmax(out.logits[:, -n:].float(), dim=-1).gather(-1, idx)[..., 0].cpu()

    def _mask_mapping(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-layer-type masks, for models whose forward takes ``{layer type: 4D mask}`` (Gemma 3, Qwen2)."""
        import inspect as _inspect

        decoder = getattr(self.model, "model", self.model)
        try:
            source = _inspect.getsource(type(decoder).forward)
        except (OSError, TypeError):
            source = ""
        types = set(getattr(getattr(self.model, "config", None), "layer_types", None) or ())
        if "causal_mask_mapping := attention_mask, dict" not in source or not types <= set(masks):
            raise ConfigError(
                "masked LOO on a model with sliding-window layers over a prompt longer than the window needs a "
                f"model that takes one attention mask per layer type ({type(decoder).__name__} does not): use an "
                "exact strategy"
            )
        return masks

    def _iter(self, items, desc):
        if not self.progress:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc or "ablations", leave=False)

    def _uncached(self, ids: list[int], n: int, cost: Cost) -> torch.Tensor:
        out = self._forward(torch.tensor([ids]), cost, logits_to_keep=n + 1)
        return self._gather(out.logits[0, :n], ids[-n:])

    def _batches(self, rows: list[_Row], max_size: int) -> list[list[_Row]]:
        """Group rows sorted by shared prefix under the size, memory and recompute caps."""
        batches: list[list[_Row]] = []
        for row in sorted(rows, key=lambda r: (r.prefix, r.index)):
            if batches:
                cand = [*batches[-1], row]
                p = cand[0].prefix
                width = max(len(r.ids) for r in cand) - p
                solo = sum(len(r.ids) - r.prefix for r in cand)
                if (
                    len(cand) <= max_size
                    and len(cand) * (p + width) <= self.max_batch_tokens
                    and len(cand) * width <= (1 + self.max_recompute) * solo
                ):
                    batches[-1] = cand
                    continue
            batches.append([row])
        return batches

    def _prefix_cache(self, cache, full: list[int], p: int, batch: int, cost: Cost):
        """A cache holding positions ``[0, p)`` of the full prompt, repeated ``batch`` times."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if all(type(layer) is DynamicLayer for layer in cache.layers):
            data = [
                (layer.keys[:, :, :p].expand(batch, -1, -1, -1), layer.values[:, :, :p].expand(batch, -1, -1, -1))
                for layer in cache.layers
            ]
            return DynamicCache(ddp_cache_data=data)
        # Sliding-window (and other) layers do not keep the whole history, so a slice of them
        # is not the prefix's cache: recompute the prefix instead.
        prefix_cache = DynamicCache(config=self.model.config)
        self._forward(torch.tensor([full[:p]]), cost, cache=prefix_cache, logits_to_keep=1)
        prefix_cache.batch_repeat_interleave(batch)
        return prefix_cache

    def _run_batch(
        self, batch: list[_Row], cache, full: list[int], answer: list[int], cost: Cost
    ) -> list[torch.Tensor]:
        n = len(answer)
        p = batch[0].prefix
        suffixes = [r.ids[p:] for r in batch]
        width = max(len(s) for s in suffixes)
        pad = answer[0]  # any valid id: right padding is never attended to by real tokens
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes])
        keep = width - min(len(s) for s in suffixes) + n + 1
        past = self._prefix_cache(cache, full, p, len(batch), cost) if p > 0 else None
        out = self._forward(input_ids, cost, cache=past, logits_to_keep=keep)
        logits = out.logits
        results = []
        for b, s in enumerate(suffixes):
            start = len(s) - n - 1 - (width - keep)
            results.append(self._gather(logits[b, start : start + n], answer))
        return results


def _masked_rows(masks: Sequence[Sequence[tuple[int, int]]], limit: int) -> list[list[tuple[int, int]]]:
    """Validated token ranges per mask: each ``(start, end)`` with ``0 <= start <= end <= limit``."""
    rows = []
    for i, mask in enumerate(masks):
        row = []
        for r in mask:
            if not (isinstance(r, (tuple, list)) and len(r) == 2 and all(isinstance(x, int) for x in r)
                    and 0 <= r[0] <= r[1] <= limit):
                raise InputError(
                    f"mask {i} holds {r!r}: a mask is a list of (start, end) token ranges with 0 <= start <= end "
                    f"<= {limit} (the prompt's tokens before its last, which predicts the answer's first token)"
                )
            row.append((r[0], r[1]))
        rows.append(row)
    return rows


def _halving(run, items: list, combine, what: str):
    """``run(items)``; on out-of-memory, free what we can and ``combine`` the runs of each half,
    down to one item (``what`` names one item in the error)."""
    try:
        return run(items)
    except torch.OutOfMemoryError as exc:
        if len(items) == 1:
            raise OutOfMemory(
                f"out of memory scoring one {what}: use shorter or fewer sources, a smaller model, or a "
                "device with more memory"
            ) from exc
    # Retry outside the except block: the live exception's traceback holds the failed pass's
    # frames and their tensors, which empty_cache() could not free.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mid = len(items) // 2
    return combine(_halving(run, items[:mid], combine, what), _halving(run, items[mid:], combine, what))


def _check_nonempty(prompt: Sequence[int], answer: Sequence[int]) -> None:
    """The answer's first token is predicted from the prompt's last: both must have tokens."""
    if len(prompt) == 0 or len(answer) == 0:
        raise InputError(f"empty {'prompt' if len(prompt) == 0 else 'answer'} token ids: there is nothing to score")
