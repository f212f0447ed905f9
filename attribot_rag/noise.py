"""How large a score must be before it is more than numerical noise.

Every score attribot-rag reports is a difference of two log-likelihoods of the same answer
computed by two forward passes. In float32 the cached, batched engine equals uncached exact
LOO to ~1e-5 nats, so a difference is signal. In bfloat16 (the default on CUDA and on CPUs
with native bf16) each pass rounds differently, and a difference of two passes carries that
rounding: on the benchmark data per-span bf16 scores differ from the fp32 ones by up to about
half a nat.

The noise of a difference summed over ``n`` answer tokens grows like ``sqrt(n)`` (independent
per-token rounding), so it is modelled as ``bound(n) = per_sqrt_token * sqrt(n)``, with the
coefficient measured, not guessed: ``python -m benchmarks.trust noise`` scores calibration
examples (HotpotQA *train*) in the reduced dtype and in fp32 through the same engine path and
stores the 99th percentile of ``|score_bf16 - score_fp32| / sqrt(n)`` over every reported span
(documents, sentences, context support) per model in ``data/noise_calibration.json``.
A model without its own calibration uses the largest coefficient measured for its dtype and
says so (``source``). The check on held-out data is in ``benchmarks/results/trust_noise_*.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

# fp32: the engine's cached/batched path against uncached exact LOO, per sqrt(token), with
# margin (tests/test_engine.py holds real-model differences to 1e-4 nats in total; 3e-5 measured).
FP32_PER_SQRT_TOKEN = 1e-5


@dataclass(frozen=True)
class Noise:
    """The numerical-noise bound of one result's scores.

    Attributes:
        dtype: the scoring model's dtype (``"float32"``, ``"bfloat16"``, ...).
        per_sqrt_token: nats of noise per square root of the answer tokens a score sums over.
        source: where the coefficient comes from (a calibration, a dtype default, ...).
    """

    dtype: str
    per_sqrt_token: float
    source: str

    def bound(self, n_tokens: int) -> float:
        """Largest difference (nats) that numerical noise alone is expected to make, over ``n_tokens``."""
        return self.per_sqrt_token * math.sqrt(max(int(n_tokens), 1))

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "per_sqrt_token": self.per_sqrt_token, "source": self.source}


@lru_cache(maxsize=1)
def calibration() -> dict[str, dict[str, float]]:
    """``{dtype: {model name: per_sqrt_token}}`` as shipped in ``data/noise_calibration.json``."""
    try:
        text = resources.files("attribot_rag").joinpath("data", "noise_calibration.json").read_text("utf-8")
    except FileNotFoundError:  # pragma: no cover - the file ships with the package
        return {}
    return {k: v for k, v in json.loads(text).get("per_sqrt_token", {}).items() if isinstance(v, dict)}


def estimate(model_name: str, dtype: Any) -> Noise:
    """The noise model for ``model_name`` run in ``dtype`` (a torch dtype or its name)."""
    name = str(dtype).replace("torch.", "")
    if name in ("float32", "float64"):
        return Noise(name, FP32_PER_SQRT_TOKEN, "fp32: cached engine vs exact LOO (tests hold it to 1e-4 nats)")
    table = calibration().get(name, {})
    if model_name in table:
        return Noise(name, float(table[model_name]), f"calibrated: {model_name} {name} vs float32 (HotpotQA train)")
    if table:
        worst = max(table, key=table.get)
        return Noise(name, float(table[worst]),
                     f"no calibration for {model_name}: the largest measured {name} coefficient ({worst})")
    # No calibration at all: bf16 keeps 8 bits of mantissa, ~2**-8 relative error per op.
    return Noise(name, 0.25, f"uncalibrated {name} default")
