"""Masked LOO: a cheap, *approximate* first stage for leave-one-out attribution (issue #17).

Exact LOO re-runs every token after a removed span. Masked LOO runs the full prompt + answer
once and scores each ablation by re-running only the answer (and the prompt's last token,
which predicts the answer's first) against the full prompt's KV cache, with the span's token
positions hidden from attention (:meth:`~attribot_rag.engine.LikelihoodEngine.masked_answer_logprobs`);
many ablations are packed into one sequence after one copy of the shared cache (one forward pass
per chunk of rows, each row at the answer's original positions, rows blind to one another). Its
cost grows with ablations x answer tokens instead of ablations x the tokens after each span.

It is not LOO: the context tokens after a span keep what they read from it, so a span whose
content the rest of the prompt already absorbed (a later sentence that restates it, the
question's own attention) scores less than under LOO. Every score it writes says so: its spans'
``scored_by`` is ``"MODEL (masked LOO, approximate)"`` and the preset is named ``"masked"``.
Use it to rank or shortlist, and rescore what matters exactly: the ``"masked-rescore"`` preset
(``Strategy(engine_mode="masked", prune_top_k=k)``, and ``rescore_documents=k`` for documents)
rescores the masked pass's best spans with the target's exact LOO (``scored_by="MODEL"``); the
others keep their masked score and label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .engine import Cost
from .errors import ConfigError
from .prompt import Ablation, History

MASKED = "masked"  # the Strategy.engine_mode that selects masked LOO
APPROXIMATE = "masked LOO, approximate"


def approximate_label(model_name: str) -> str:
    """``SpanScore.scored_by`` of a span scored by masked LOO: the model and that the score is approximate."""
    return f"{model_name} ({APPROXIMATE})"


def is_approximate(scored_by: str) -> bool:
    """Whether a ``scored_by`` label marks a masked-LOO (approximate) score."""
    return scored_by.endswith(f"({APPROXIMATE})")


def masked_logprobs(scorer, question: str, history: History, sources, prompt: list[int], answer_ids: list[int],
                    ablations: Sequence[Ablation], cost: Cost, memo: dict,
                    desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(full [n_answer], masked [len(ablations), n_answer])`` log-probs of one scorer's answer.

    ``scorer`` is the attributor's ``_Scorer`` (its ``builder`` and ``engine``); ``prompt`` and
    ``answer_ids`` its encoded full prompt and answer. The prompt's span layout and the full pass
    are kept in ``memo`` for the call's other passes (documents, then sentences).
    """
    layout = memo.get(("layout", id(scorer)))
    if layout is None:
        layout = memo[("layout", id(scorer))] = scorer.builder.encode_layout(question, sources, history)
    if layout.ids != list(prompt):  # pragma: no cover - encode_layout mirrors encode_prompt
        raise ConfigError("masked LOO could not locate the spans in the prompt's tokens: use an exact strategy")
    prefill = memo.get(id(scorer))
    if prefill is None or prefill.ids != tuple(prompt) + tuple(answer_ids):
        prefill = memo[id(scorer)] = scorer.engine.prefill(prompt, answer_ids, cost=cost)
    masks = [[layout.ranges[a]] for a in ablations]
    return prefill.logprobs, scorer.engine.masked_answer_logprobs(prefill, masks, cost=cost, desc=desc)
