"""Device and dtype choice (checked without loading anything), :class:`LoadedModel` and :func:`load_model`:
embedded short names (see :mod:`.registry`), local folders, ``.gguf`` files and Hugging Face ids."""

from __future__ import annotations

import difflib
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DeviceError, ModelError, UnknownModelError
from . import registry as _registry  # pull / convert_gguf looked up at call time: patchable there
from .registry import DEFAULT_MODEL, REGISTRY


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str):
    """bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32."""
    import torch

    if str(device).startswith("cuda"):
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


DTYPES: dict[str, str] = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                          "fp16": "float16", "float16": "float16"}
"""The dtype names :func:`resolve_dtype` accepts (besides a ``torch.dtype``), each with the torch dtype it means."""

_MODEL_OBJECT_SETTINGS = ("device= and dtype= apply to models loaded by name or path; the {what} object is used as it "
                          "is: move or cast it first (model.to(device, dtype)), or pass its name")


def check_device(device: Any) -> str:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``) as a string, if torch
    can use it on this machine; else a :class:`~attribot_rag.errors.DeviceError`. Loads nothing."""
    import torch

    if not isinstance(device, (str, torch.device)):
        raise DeviceError(f"device={device!r}: pass a string such as 'cpu', 'cuda' or 'cuda:1'")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise DeviceError(f"device {device!r} is not available: this machine has {found} CUDA device(s); "
                          "pass device='cpu' (or leave device unset to pick one)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r} is not available here: pass device='cpu'")
    return str(device)


def resolve_dtype(dtype: Any) -> Any:
    """``dtype`` as a ``torch.dtype``: a ``torch.dtype`` as is, a name from :data:`DTYPES` (``"fp32"``,
    ``"bf16"``, ...) as its dtype, ``None`` as ``None`` (the device's default, :func:`default_dtype`).

    Raises:
        DeviceError: an unknown name (or any other value).
    """
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPES.get(dtype) if isinstance(dtype, str) else None
    if name is None:
        raise DeviceError(f"unknown dtype {dtype!r}: pass a torch.dtype or one of {', '.join(DTYPES)} "
                          "(or None for the device's default)")
    return getattr(torch, name)


def is_model_object(model: Any) -> bool:
    """Whether ``model`` is a model object (a :class:`LoadedModel` or a ``(model, tokenizer)`` pair), not a
    name or path to load."""
    return isinstance(model, LoadedModel) or (isinstance(model, tuple) and len(model) == 2)


def check_model_settings(model: Any, device: Any = None, dtype: Any = None, what: str = "model") -> None:
    """Check a model setting without loading anything: ``model`` is a name or path (``str`` /
    ``os.PathLike``), a :class:`LoadedModel` or a ``(model, tokenizer)`` pair; ``device`` and ``dtype``
    are usable here (:func:`check_device`, :func:`resolve_dtype`) and given only with a name or path
    (a model object is never moved or cast behind its owner's back). ``what`` names the setting in
    messages (``"model"``, ``"proxy"``).

    Raises:
        ConfigError: a ``model`` of another type, or ``device``/``dtype`` given with a model object.
        DeviceError: an unknown dtype, or a device this machine does not have.
    """
    if not (isinstance(model, (str, os.PathLike)) or is_model_object(model)):
        raise ConfigError(
            f"{what}={type(model).__name__}: pass an embedded short name (e.g. {DEFAULT_MODEL!r}), a local model "
            "folder, a .gguf file, a Hugging Face id, a LoadedModel or a (model, tokenizer) pair"
        )
    if (device is not None or dtype is not None) and is_model_object(model):
        raise ConfigError(_MODEL_OBJECT_SETTINGS.format(what=what))
    resolve_dtype(dtype)
    if device is not None:
        check_device(device)


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, ready for the likelihood engine."""

    name: str
    model: Any
    tokenizer: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def context_window(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return getattr(text_cfg, "max_position_embeddings", None)

    @property
    def device(self):
        return next(self.model.parameters()).device


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | None = None,
    dtype=None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Accepts an embedded short name (see :data:`REGISTRY`; pulled and converted on first use),
    a local model folder, a ``.gguf`` file, or a Hugging Face id (downloaded or taken from the
    local HF cache). Device and dtype default to CUDA + bf16 when present, else CPU with bf16
    where the CPU supports it natively, else fp32.

    Safety: embedded models are verified against pinned sha256 digests; weights load from
    safetensors only unless ``allow_pickle=True`` (pickle checkpoints can run code on load);
    ``trust_remote_code`` stays off unless you turn it on.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = check_device(device or default_device())
    dtype = resolve_dtype(dtype) or default_dtype(device)
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name in REGISTRY and not isinstance(name_or_path, os.PathLike):  # Path("./smollm2-135m") is a folder
        _registry._check_transformers(REGISTRY[name])
        folder = _registry.convert_gguf(_registry.pull(name), REGISTRY[name].sha256)
    elif path.is_file() and path.suffix == ".gguf":
        folder = _registry.convert_gguf(path)
    elif path.is_dir():
        folder = path
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not isinstance(name_or_path, os.PathLike):
        folder = name  # a Hub id: transformers resolves it (cache or network)
        _check_hub_reachable(name)
    else:  # fail fast: a bare word sent to the Hub would retry the network for about a minute
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        raise UnknownModelError(
            f"unknown model {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + ": use one of "
            f"{', '.join(REGISTRY)}, a local model folder, a .gguf file, or a Hugging Face id in its "
            "org/name form (e.g. 'Qwen/Qwen2.5-1.5B-Instruct', 'openai-community/gpt2')"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError) as exc:
        if not allow_pickle and isinstance(folder, Path) and (any(folder.glob("*.bin")) or any(folder.glob("*.pt"))):
            raise ModelError(
                f"{folder} holds pickle weights (.bin/.pt), which can run code when loaded: convert them to "
                "safetensors, or pass allow_pickle=True if you trust the checkpoint"
            ) from exc
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UnknownModelError(
            f"could not load model {name!r}: {first[:300]} For a Hub id, this machine needs network "
            f"access or the model in its local Hugging Face cache; otherwise pass a local folder "
            f"or one of the embedded models: {', '.join(REGISTRY)}."
        ) from exc
    except Exception as exc:  # e.g. a truncated model.safetensors (SafetensorError)
        raise ModelError(f"could not load model {name!r} from {folder}: {type(exc).__name__}: {exc}") from exc
    model.to(device).eval()
    return LoadedModel(name=name, model=model, tokenizer=tokenizer)


@functools.cache
def _hub_cached(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s config (so loading needs no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an odd id or an old huggingface_hub: let transformers decide
        return True


def _hub_offline() -> bool:
    """True when the Hub is off (``HF_HUB_OFFLINE``) or its host cannot be reached within 3 s."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or not url.hostname:
        return False  # a proxy decides reachability: let the download try
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError:
        return True
    return False


def _check_hub_reachable(repo_id: str) -> None:
    """Fail in one line, at once, for a Hub id that is not cached on a machine without the Hub (instead of a
    minute of download retries)."""
    if not _hub_cached(repo_id) and _hub_offline():
        raise UnknownModelError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached (offline): "
            f"download it where there is network and copy the folder here (pass its path), or use an embedded "
            f"model: {', '.join(REGISTRY)}"
        )


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (for keys, logs and tracing metadata)."""
    return str(dtype).replace("torch.", "")


def describe_tokenizer_pair(target: LoadedModel, proxy: LoadedModel) -> str:
    """``"shared"`` when the proxy can reuse the target's token ids, else ``"retokenize"``."""
    t, p = target.tokenizer, proxy.tokenizer
    same = t.get_vocab() == p.get_vocab() and type(t).__name__ == type(p).__name__
    return "shared" if same else "retokenize"
