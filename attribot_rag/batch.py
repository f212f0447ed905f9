"""Attribution at scale: ``attribot-rag batch IN OUT`` over logs of RAG answers, locally or on Ray.

IN is a JSONL file (one record a line) or a Parquet file / folder of Parquet files; every
record has ``id``, ``question``, ``documents`` (strings, or ``{"id", "text", ...}`` objects)
and ``answer``. OUT is a folder:

``_job.json``
    the job's identity: the input's path and fingerprint and every setting that changes the
    output. A rerun with other settings is refused unless ``overwrite``.
``part-000000.jsonl`` (or ``.parquet``), ...
    one file per shard of ``shard_size`` consecutive input records, rows in input order. A
    shard is written to a hidden temp name, fsynced and ``os.replace``-d into place, so a shard
    file is either complete or absent. A restarted job skips the shards that exist: nothing is
    lost and nothing is written twice, however the previous run ended.
``_summary.json``
    written when the job finishes: records, ok, failed, seconds.

Two engines give the same rows: ``local`` (this process, the model loaded once) and ``ray``
(Ray Data ``map_batches`` over shards with an actor pool, one model per actor, a GPU per
actor when the cluster has GPUs). A bad record (missing field, empty answer, prompt too long
for the model, ...) becomes a row whose ``error`` is ``"ErrorType: message"``; the job goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import (
    AttribotError,
    BatchError,
    ConfigError,
    EmptyAnswerError,
    InputError,
    UnknownModelError,
    is_count,
    is_finite_number,
)
from .models import DEFAULT_MODEL, REGISTRY
from .spans import as_id, check_text

logger = logging.getLogger("attribot_rag")

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
LOCK_FILE = "_lock"
JOB_VERSION = 1
OUTPUT_FORMATS = ("jsonl", "parquet")
ENGINES = ("local", "ray")
REQUIRED_FIELDS = ("id", "question", "documents", "answer")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_PART = re.compile(r"part-(\d{6,})\.(jsonl|parquet)")
_TMP = re.compile(r"\.(part-\d+\.(jsonl|parquet)|_job\.json|_summary\.json)\.[\w-]+\.tmp")  # _atomic_write's


# ---------------------------------------------------------------------------------------- input
@dataclass(frozen=True)
class Shard:
    """Records ``[start, stop)`` of the input; ``offset`` is the byte offset of ``start`` in a JSONL file."""

    index: int
    start: int
    stop: int
    offset: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start


def input_format(path: str | os.PathLike) -> str:
    """``"jsonl"`` or ``"parquet"`` from the path; :class:`BatchError` if missing or unknown."""
    p = Path(path)
    if not p.exists():
        raise BatchError(f"input {p} does not exist: pass a .jsonl file, a .parquet file or a folder of .parquet files")
    if p.is_dir():
        if not _parquet_files(p):
            raise BatchError(f"input folder {p} holds no .parquet files: pass a .jsonl or .parquet file")
        return "parquet"
    suffix = p.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    raise BatchError(
        f"input {p}: unknown format {suffix or '(no suffix)'!r}; use JSON lines (.jsonl, .ndjson) or Parquet "
        "(.parquet, or a folder of them)"
    )


def _parquet_files(p: Path) -> list[Path]:
    """The dataset's files; like pyarrow, parts under names starting with "_" or "." are not data
    (Spark's ``_temporary/``, this library's own hidden temp files)."""
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _PARQUET_SUFFIXES
                  and not any(part.startswith(("_", ".")) for part in f.relative_to(p).parts))


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BatchError("Parquet needs pyarrow: pip install 'attribot-rag[parquet]' (or pyarrow)") from exc
    return pq


def plan_shards(path: str | os.PathLike, shard_size: int) -> list[Shard]:
    """Cut the input into shards of ``shard_size`` records (one pass; JSON is not parsed).

    Blank JSONL lines are not records. Shards are numbered from 0 in input order.
    """
    if not is_count(shard_size, 1):
        raise ConfigError(f"shard_size must be an int >= 1, got {shard_size!r}")
    p = Path(path)
    shards: list[Shard] = []
    fmt = input_format(p)
    with _input_errors(p):
        if fmt == "jsonl":
            n = pos = 0
            with open(p, "rb") as f:
                for line in f:
                    if line.strip():
                        if n % shard_size == 0:
                            shards.append(Shard(len(shards), n, n, pos))
                        n += 1
                        shards[-1] = dataclasses.replace(shards[-1], stop=n)
                    pos += len(line)
            return shards
        pq = _pyarrow()
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in _parquet_files(p))
    return [Shard(i, s, min(s + shard_size, total)) for i, s in enumerate(range(0, total, shard_size))]


@contextlib.contextmanager
def _input_errors(p: Path) -> Iterator[None]:
    """Reading the input failed (unreadable file, corrupt Parquet): a :class:`BatchError` saying so."""
    try:
        yield
    except BatchError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # pyarrow's ArrowInvalid / ArrowIOError are ValueError / OSError
        if type(exc).__module__.startswith("pyarrow") or isinstance(exc, EOFError):
            raise BatchError(f"input {p} is not a readable Parquet file or dataset ({_error_text(exc)}): fix or "
                             "replace it (finished shards are kept; a changed input starts a new job)") from exc
        if isinstance(exc, OSError):
            raise BatchError(f"cannot read input {p}: {exc.strerror or exc}") from exc
        raise


def read_shard(path: str | os.PathLike, shard: Shard) -> list[tuple[int, Any]]:
    """``(record index, record)`` for each record of ``shard``; a record that cannot be decoded
    is an :class:`InputError` in place of its dict (it becomes an error row)."""
    p = Path(path)
    with _input_errors(p):
        return _read_shard(p, shard)


def _read_shard(p: Path, shard: Shard) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    if input_format(p) == "jsonl":
        with open(p, "rb") as f:
            f.seek(shard.offset)
            index = shard.start
            while index < shard.stop:
                line = f.readline()
                if not line:
                    raise BatchError(f"input {p} ended early (record {index}): did it change during the job?")
                if not line.strip():
                    continue
                try:
                    out.append((index, json.loads(line, parse_constant=_no_constant)))
                except RecursionError:
                    out.append((index, InputError(f"record {index} is nested too deeply to read: flatten it")))
                except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN / Infinity
                    bad = InputError(f"record {index} is not valid JSON ({exc}); write one object a line")
                    out.append((index, bad))
                index += 1
        return out
    pq = _pyarrow()
    base = 0
    for f in _parquet_files(p):
        pf = pq.ParquetFile(f)
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            lo, hi = max(shard.start, base), min(shard.stop, base + n)
            if lo < hi:  # only the row groups that overlap the shard are read
                rows = pf.read_row_group(g).slice(lo - base, hi - lo).to_pylist()
                out.extend(zip(range(lo, hi), rows))
            base += n
            if base >= shard.stop:
                return out
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value; write null or a number")


def fingerprint(path: str | os.PathLike) -> str:
    """Size and modification time of the input file(s): a changed input is a different job."""
    p = Path(path)
    files = [p] if p.is_file() else _parquet_files(p)
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------- output
def parquet_schema():
    """The Arrow schema of an output row (fixed, so every shard and every error row agree)."""
    import pyarrow as pa

    citation = pa.struct([
        ("rank", pa.int64()), ("source_id", pa.string()), ("sentence", pa.string()), ("start", pa.int64()),
        ("end", pa.int64()), ("score", pa.float64()), ("share", pa.float64()),
        ("answer_sentences", pa.list_(pa.int64())),
    ])
    source = pa.struct([("id", pa.string()), ("score", pa.float64()), ("share", pa.float64()), ("used", pa.bool_())])
    timing = pa.struct([("seconds", pa.float64()), ("forward_passes", pa.int64()), ("forward_tokens", pa.int64())])
    return pa.schema([
        ("index", pa.int64()), ("id", pa.string()), ("question", pa.string()), ("answer", pa.string()),
        ("strategy", pa.string()), ("supported", pa.bool_()), ("citations", pa.list_(citation)),
        ("sources", pa.list_(source)),
        ("dropped_sources", pa.list_(pa.string())), ("error", pa.string()), ("timing", timing),
    ])


def _part_name(index: int, fmt: str) -> str:
    return f"part-{index:06d}.{fmt}"


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(final: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(binary file)`` to a hidden temp name, fsync, then ``os.replace``."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def _safe(value: Any) -> Any:
    """``value`` as strict JSON and UTF-8 can hold it: lone surrogates become U+FFFD, NaN / inf None."""
    if isinstance(value, str):
        return value if not _SURROGATE.search(value) else value.encode("utf-8", "surrogatepass").decode(
            "utf-8", "replace")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {_safe(k): _safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe(v) for v in value]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _dumps(row: Mapping[str, Any]) -> str:
    """One row as a line of strict JSON (whatever a record held, a row can always be written)."""
    return json.dumps(_safe(row), ensure_ascii=False, allow_nan=False)


def write_shard(out_dir: Path, index: int, rows: list[dict], fmt: str) -> Path:
    """Write one shard's rows atomically; returns the shard file.

    A failed write (disk full, OUT made read-only, ...) leaves no partial file and raises
    :class:`BatchError`: the shard is recomputed when the job is rerun.
    """
    final = out_dir / _part_name(index, fmt)
    try:
        if fmt == "jsonl":
            data = "".join(_dumps(r) + "\n" for r in rows).encode("utf-8")
            _atomic_write(final, lambda f: f.write(data))
        else:
            pq = _pyarrow()
            import pyarrow as pa

            table = pa.Table.from_pylist([_safe(r) for r in rows], schema=parquet_schema())
            _atomic_write(final, lambda f: pq.write_table(table, f))
    except OSError as exc:
        raise _write_error(final, exc) from exc
    return final


def _write_error(path: Path, exc: OSError) -> BatchError:
    return BatchError(f"cannot write {path}: {exc.strerror or exc}; make the output folder writable (free disk "
                      "space, fix permissions) or choose another, then rerun the same command: finished shards are "
                      "kept")


def _read_part(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    return _pyarrow().read_table(path).to_pylist()


def read_output(out_dir: str | os.PathLike) -> list[dict]:
    """Every row a batch job wrote to ``out_dir``, in input order."""
    d = Path(out_dir)
    parts = sorted((p for p in d.iterdir() if _PART.fullmatch(p.name)),
                   key=lambda p: int(_PART.fullmatch(p.name).group(1)))  # by number: names grow past 6 digits
    return [row for p in parts for row in _read_part(p)]


# ---------------------------------------------------------------------------------------- rows
def _error_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose message cannot be built still gets a row
        text = "(no message)"
    return f"{type(exc).__name__}: {text[:2000]}"


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _check_record(raw: Any) -> tuple[str, str, list, str]:
    """The record's (id, question, documents, answer), or an :class:`InputError` saying what is wrong."""
    if isinstance(raw, BaseException):
        raise raw
    if not isinstance(raw, Mapping):
        raise InputError(f"the record is a {type(raw).__name__}, not an object with {', '.join(REQUIRED_FIELDS)}")
    missing = [k for k in REQUIRED_FIELDS if k not in raw or (k != "answer" and raw[k] is None)]
    if missing:
        raise InputError(f"the record has no {', '.join(repr(k) for k in missing)}: every record needs "
                         f"{', '.join(REQUIRED_FIELDS)}")
    rid, question, docs, answer = (raw[k] for k in REQUIRED_FIELDS)
    rid = as_id(rid, "'id'")
    check_text(question, "'question'")
    if isinstance(docs, (str, bytes, Mapping)) or not hasattr(docs, "__iter__"):
        raise InputError(f"'documents' is a {type(docs).__name__}: use a list of strings or of {{'id', 'text'}} "
                         "objects")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise EmptyAnswerError("the answer is empty: batch attributes logged answers and never generates one")
    check_text(answer, "'answer'")
    return rid, question, list(docs), answer


def _result_row(index: int, rid: str, result, top_k: int | None) -> dict:
    verdicts = result.decisions()  # the one decision layer: "supported" and "used" as everywhere else
    used, shares = verdicts.used, result.source_shares()
    models = result.timing.get("models", {}).values()
    return {
        "index": index, "id": rid, "question": result.question, "answer": result.answer, "strategy": result.strategy,
        "supported": verdicts.supported,
        "citations": [
            {"rank": c.rank, "source_id": c.source_id, "sentence": c.sentence, "start": c.start, "end": c.end,
             "score": c.score, "share": c.share, "answer_sentences": c.answer_sentences}
            for c in result.citations(top_k=top_k)
        ],
        "sources": [
            {"id": s.id, "score": d.score, "share": sh, "used": u}
            for s, d, sh, u in zip(result.sources, result.document_scores, shares, used)
        ],
        "dropped_sources": [s.id for s in result.dropped_sources],
        "error": None,
        "timing": {"seconds": result.timing.get("total_seconds", 0.0),
                   "forward_passes": sum(int(m["forward_passes"]) for m in models),
                   "forward_tokens": sum(int(m["forward_tokens"]) for m in models)},
    }


def _error_row(index: int, raw: Any, strategy: str, exc: BaseException, seconds: float) -> dict:
    get = raw.get if isinstance(raw, Mapping) else (lambda _k: None)
    try:
        rid = as_id(get("id"), "id")
    except InputError:  # absent, or not an id: the row's index still names the record
        rid = None
    return _safe({
        "index": index, "id": rid,
        "question": _str_or_none(get("question")), "answer": _str_or_none(get("answer")), "strategy": strategy,
        "supported": None, "citations": [], "sources": [], "dropped_sources": [], "error": _error_text(exc),
        "timing": {"seconds": seconds, "forward_passes": 0, "forward_tokens": 0},
    })


class RecordAttributor:
    """Turns input records into output rows with one :class:`~attribot_rag.Attributor` (loaded once).

    Any failure of one record (bad fields, empty answer, prompt too long, out of memory, ...)
    becomes that record's error row. Only interrupts propagate, and a :class:`BatchError` once
    ``max_unexpected_in_a_row`` records in a row fail with errors that are not attribot-rag's own
    (a broken model or device would otherwise turn the rest of the job into error rows).
    """

    def __init__(self, target, proxy=None, *, strategy="auto", top_k: int | None = 5, device: str | None = None,
                 dtype=None, overflow: str = "error", max_unexpected_in_a_row: int = 10) -> None:
        from .attributor import Attributor

        self.attributor = Attributor(target, proxy, strategy=strategy, device=device, dtype=dtype, overflow=overflow)
        self.top_k = top_k
        self.max_unexpected_in_a_row = max_unexpected_in_a_row
        self._unexpected = 0

    def row(self, index: int, raw: Any) -> dict:
        """The output row of one record."""
        started = time.perf_counter()
        try:
            rid, question, docs, answer = _check_record(raw)
            result = self.attributor.attribute(question, docs, answer)
        except AttribotError as exc:  # a bad record: its row says why
            self._unexpected = 0
            return _error_row(index, raw, self.attributor.strategy.name, exc, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - one odd record must not stop the job...
            self._unexpected += 1
            if self._unexpected >= self.max_unexpected_in_a_row:  # ...but a broken model or device must
                raise BatchError(
                    f"{self._unexpected} records in a row failed with unexpected errors (last, record {index}: "
                    f"{_error_text(exc)}): the model or device looks broken; fix it and rerun the same command "
                    "to resume (the shard in progress is not written)"
                ) from exc
            return _error_row(index, raw, self.attributor.strategy.name, exc, time.perf_counter() - started)
        self._unexpected = 0
        return _result_row(index, rid, result, self.top_k)

    def rows(self, records: list[tuple[int, Any]]) -> Iterator[dict]:
        for index, raw in records:
            yield self.row(index, raw)


# ---------------------------------------------------------------------------------------- job folder
@dataclass
class BatchSummary:
    """What a batch job did. ``ok``/``failed`` count every row in OUT (this run's and earlier runs');
    ``written``/``written_failed`` this run's rows only; ``skipped`` records already in OUT."""

    output_dir: str
    engine: str
    records: int
    ok: int
    failed: int
    written: int
    written_failed: int
    skipped: int
    seconds: float

    @property
    def records_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "records_per_second": self.records_per_second}

    def __str__(self) -> str:
        return (f"done: {self.ok} ok, {self.failed} failed, {self.records} records in {self.output_dir} | this run: "
                f"{self.written} attributed ({self.written_failed} failed), {self.skipped} already written, "
                f"{self.seconds:.1f}s, {self.records_per_second:.2f} records/s ({self.engine})")


def _model_spec(model) -> str:
    if model is None or isinstance(model, (str, os.PathLike)):
        return None if model is None else str(model)
    name = getattr(model, "name", None) or type(model).__name__
    return f"<loaded:{name}>"


def _check_model_spec(spec: Any, what: str) -> None:
    """Fail before starting workers on a model name no worker could load."""
    if spec is None:
        return
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"the ray engine builds each {what} inside its actor: pass a model name or a folder path, "
                          "not a loaded model")
    name = str(spec)
    if name in REGISTRY or Path(name).expanduser().exists() or re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return
    raise UnknownModelError(f"unknown {what} model {name!r}: use one of {', '.join(REGISTRY)}, a local model folder, "
                            "a .gguf file or a Hugging Face id")


def _owned(name: str) -> bool:
    return name in (JOB_FILE, SUMMARY_FILE, LOCK_FILE) or bool(_PART.fullmatch(name) or _TMP.fullmatch(name))


class _Lock:
    """An exclusive ``flock`` on OUT/_lock: two jobs never write one folder (released on any exit)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BatchError(f"cannot write to the output folder {self.path.parent}: {exc.strerror or exc}; pass a "
                             "folder you can write") from exc
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            return self
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            raise BatchError(f"another attribot-rag batch job is writing {self.path.parent}: wait for it to finish, "
                             "or write to another folder") from exc
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _prepare_out(out_dir: Path, job: dict, overwrite: bool) -> None:
    """Create OUT or check it belongs to this job (same arguments); remove stale temp files."""
    names = [p.name for p in out_dir.iterdir()]
    foreign = sorted(n for n in names if not _owned(n))
    if foreign:
        raise BatchError(f"output folder {out_dir} holds files attribot-rag did not write ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}): pass a new or empty folder")
    job_file = out_dir / JOB_FILE
    if job_file.exists():
        try:
            old = json.loads(job_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        diff = [k for k in sorted(set(old) | set(job)) if old.get(k) != job.get(k)]
        if diff and not overwrite:
            changes = "; ".join(f"{k}: {old.get(k)!r} -> {job.get(k)!r}" for k in diff[:4])
            raise BatchError(f"{out_dir} holds a job started with other arguments ({changes}): rerun with the original "
                             "arguments to resume it, pass --overwrite (overwrite=True) to start over, or use "
                             "another folder")
        if not diff:
            for n in names:
                if _TMP.fullmatch(n):  # left by a killed run
                    (out_dir / n).unlink(missing_ok=True)
            return
    elif any(_PART.fullmatch(n) for n in names) and not overwrite:
        raise BatchError(f"{out_dir} holds shard files but no {JOB_FILE}: pass --overwrite to start over, or use "
                         "another folder")
    for n in names:  # a new job: clear what an earlier job left (only files this module writes)
        if n != LOCK_FILE:
            (out_dir / n).unlink(missing_ok=True)
    _atomic_write(job_file, lambda f: f.write((json.dumps(job, indent=1) + "\n").encode()))


def _count(out_dir: Path) -> tuple[int, int]:
    """(rows, error rows) over every shard file."""
    rows = failed = 0
    for p in out_dir.iterdir():
        if not _PART.fullmatch(p.name):
            continue
        if p.suffix == ".parquet":
            col = _pyarrow().read_table(p, columns=["error"]).column("error")
            rows, failed = rows + len(col), failed + (len(col) - col.null_count)
        else:
            part = _read_part(p)
            rows, failed = rows + len(part), failed + sum(r.get("error") is not None for r in part)
    return rows, failed


# ---------------------------------------------------------------------------------------- engines
@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block (no change when ``None``)."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_local(pending: list[Shard], input_path: Path, worker: RecordAttributor,
               on_shard: Callable[[Shard, list[dict]], None], on_record: Callable[[dict], None]) -> None:
    for shard in pending:
        rows = []
        for row in worker.rows(read_shard(input_path, shard)):
            rows.append(row)
            on_record(row)
        on_shard(shard, rows)


class _RayShardWorker:
    """A Ray Data actor: loads the model once, then reads, attributes and returns whole shards."""

    def __init__(self, input_path: str, model_kw: dict, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.input_path = input_path
        self.worker = RecordAttributor(**model_kw)

    def __call__(self, batch: dict) -> dict:
        shards, texts = [], []
        for i, start, stop, offset in zip(batch["index"], batch["start"], batch["stop"], batch["offset"]):
            shard = Shard(int(i), int(start), int(stop), int(offset))
            rows = self.worker.rows(read_shard(self.input_path, shard))
            shards.append(shard.index)
            texts.append("".join(_dumps(r) + "\n" for r in rows))
        return {"index": shards, "rows": texts}


def _run_ray(pending: list[Shard], input_path: Path, model_kw: dict, on_shard: Callable[[Shard, list[dict]], None],
             address: str | None, num_actors: int | None, cpus_per_actor: float, gpus_per_actor: float | None,
             threads: int | None, ray_init_kwargs: dict | None) -> int:
    """Shards through Ray Data; returns the number of actors used."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError("the ray engine needs Ray Data: pip install 'attribot-rag[ray]'") from exc
    started_here = not ray.is_initialized()
    if started_here:  # a cluster at `address` (or $RAY_ADDRESS); otherwise a local instance on this machine
        kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
              **(ray_init_kwargs or {})}
        term_handler = signal.getsignal(signal.SIGTERM)
        ray.init(address=address, **kw)
        if callable(term_handler) and _main_thread():  # keep the caller's SIGTERM handler (the CLI's clean exit)
            signal.signal(signal.SIGTERM, term_handler)
    quiet = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}  # tqdm shows progress
    levels = {name: logging.getLogger(name).level for name in quiet}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k, None) for k in ("enable_progress_bars", "print_on_execution_start")}
    try:
        ctx.enable_progress_bars = False  # the driver's tqdm bar counts records
        ctx.print_on_execution_start = False
        resources = ray.cluster_resources()
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        if num_actors is None:
            num_actors = (int(resources.get("GPU", 0) // gpus_per_actor) if gpus_per_actor
                          else int(resources.get("CPU", 1) // cpus_per_actor))
        num_actors = max(1, min(num_actors, len(pending)))
        if threads is None:
            threads = max(1, int(cpus_per_actor))
        items = [dataclasses.asdict(s) for s in pending]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            _RayShardWorker,
            fn_constructor_kwargs={"input_path": str(input_path), "model_kw": model_kw, "threads": threads},
            batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
        )
        by_index = {s.index: s for s in pending}
        try:
            for out in ds.iter_rows():
                # split on "\n" only: splitlines() also breaks at U+2028/U+0085 inside JSON strings
                rows = [json.loads(line) for line in out["rows"].split("\n") if line]
                on_shard(by_index[int(out["index"])], rows)
        except ray.exceptions.RayError as exc:  # e.g. an actor could not load the model
            raise BatchError(f"a Ray worker failed: {_ray_reason(exc)}; finished shards are kept: fix the cause and "
                             "rerun the same command to resume") from exc
        return num_actors
    finally:  # leave a Ray session the caller started as it was
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for k, v in saved.items():
            setattr(ctx, k, v)
        if started_here:
            ray.shutdown()


def _ray_reason(exc: BaseException) -> str:
    """The attribot-rag error inside a Ray error's text (actor tracebacks come back as text), else its first line."""
    text = str(exc)
    found = re.findall(r"attribot_rag\.errors\.(\w+): (.+)", text)
    if found:
        return f"{found[-1][0]}: {found[-1][1].strip()}"
    return f"{type(exc).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"


# ---------------------------------------------------------------------------------------- API
def run_batch(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    target=DEFAULT_MODEL,
    proxy=None,
    strategy="auto",
    top_k: int | None = 5,
    shard_size: int = 100,
    output_format: str = "jsonl",
    overflow: str = "error",
    device: str | None = None,
    dtype: str | None = None,
    engine: str = "local",
    threads: int | None = None,
    address: str | None = None,
    num_actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    ray_init_kwargs: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchSummary:
    """Attribute every record of ``input_path`` into the folder ``output_dir``; resumable.

    Args:
        input_path: a ``.jsonl`` file, or a ``.parquet`` file / folder of them, with records
            ``{"id", "question", "documents", "answer"}``.
        output_dir: the job folder (see the module docstring); rerun with the same arguments
            to resume an interrupted job.
        target, proxy, strategy, device, dtype, overflow: as for :class:`~attribot_rag.Attributor`.
            The ray engine needs ``target``/``proxy`` as names or paths (each actor loads them).
        top_k: citations kept per row (``None``: all positive ones).
        shard_size: records per output file: the unit of atomic writes and of lost work on a kill.
        output_format: ``"jsonl"`` or ``"parquet"``.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data actor pool).
        threads: torch threads (local: this process; ray: each actor, default ``cpus_per_actor``).
        address: the Ray cluster (default ``$RAY_ADDRESS``, else a local instance).
        num_actors: ray actors (default: one per GPU, or CPUs / ``cpus_per_actor`` without GPUs).
        cpus_per_actor, gpus_per_actor: resources each actor requests (``gpus_per_actor``
            default: 1 when the cluster has GPUs, else 0; fractions pack actors on a GPU).
        ray_init_kwargs: extra ``ray.init`` arguments when this call starts Ray (e.g. ``num_cpus``).
        overwrite: start over when ``output_dir`` holds a job with other arguments.
        progress: a tqdm bar (records, records/s, ETA) on stderr.

    Returns:
        a :class:`BatchSummary` (also written to ``output_dir/_summary.json``).
    """
    started = time.perf_counter()
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}: use 'local' or 'ray'")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format {output_format!r}: use 'jsonl' or 'parquet'")
    if top_k is not None and not is_count(top_k, 1):
        raise ConfigError(f"top_k must be an int >= 1 (or None for every positive citation), got {top_k!r}")
    if threads is not None and not is_count(threads, 1):
        raise ConfigError(f"threads must be an int >= 1 (or None for torch's default), got {threads!r}")
    if engine == "ray":
        _check_model_spec(target, "target")
        _check_model_spec(proxy, "proxy")
        if not (is_finite_number(cpus_per_actor) and cpus_per_actor > 0) or (
            gpus_per_actor is not None and not (is_finite_number(gpus_per_actor) and gpus_per_actor >= 0)
        ):
            raise ConfigError(f"cpus_per_actor must be a number > 0 and gpus_per_actor >= 0 (or None for one per "
                              f"GPU), got {cpus_per_actor!r} and {gpus_per_actor!r}")
        num_cpus = (ray_init_kwargs or {}).get("num_cpus")
        if num_cpus is not None and not is_count(num_cpus, 1):  # None: Ray detects the CPUs
            raise ConfigError("the local Ray instance needs num_cpus, an int >= 1 (--ray-cpus)")
        if num_actors is not None and not is_count(num_actors, 1):
            raise ConfigError(f"num_actors must be an int >= 1 (or None: one per GPU, or per cpus_per_actor CPUs), "
                              f"got {num_actors!r}")
    from .attributor import OVERFLOW_POLICIES, Strategy, check_proxy_used

    check_proxy_used(strategy, proxy)
    if overflow not in OVERFLOW_POLICIES:
        raise ConfigError(f"unknown overflow policy {overflow!r}: use one of {', '.join(OVERFLOW_POLICIES)}")
    in_path, out_dir = Path(input_path).resolve(), Path(output_dir)
    if in_path.is_dir() and (out_dir.resolve() == in_path or in_path in out_dir.resolve().parents):
        # its shard files would be read back as input records, shifting every record after them
        raise BatchError(f"output folder {out_dir} is inside the input folder {in_path}: write it elsewhere")
    if out_dir.resolve() in in_path.parents or out_dir.resolve() == in_path:
        # OUT's files are the job's to replace or (with --overwrite) delete: never the user's input
        raise BatchError(f"input {input_path} is inside the output folder {out_dir}: move the input out of it, or "
                         "write to another folder (the job replaces and deletes files in its folder)")
    shards = plan_shards(in_path, shard_size)
    records = shards[-1].stop if shards else 0
    job = {
        "version": JOB_VERSION, "input": str(in_path), "input_fingerprint": fingerprint(in_path), "records": records,
        "shard_size": shard_size, "format": output_format, "target": _model_spec(target),
        "proxy": _model_spec(proxy),
        "strategy": dataclasses.asdict(strategy) if isinstance(strategy, Strategy) else strategy,
        "top_k": top_k, "overflow": overflow,
        "dtype": dtype if dtype is None or isinstance(dtype, str) else str(dtype).removeprefix("torch."),
    }
    model_kw = dict(target=target, proxy=proxy, strategy=strategy, top_k=top_k, device=device, dtype=dtype,
                    overflow=overflow)
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchError(f"output {out_dir} is a file: OUT is a folder of shard files; pass a folder path")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}; pass a folder you can "
                         "write") from exc
    with _Lock(out_dir):
        try:
            _prepare_out(out_dir, job, overwrite)
        except OSError as exc:
            raise _write_error(out_dir / JOB_FILE, exc) from exc
        pending = [s for s in shards if not (out_dir / _part_name(s.index, output_format)).exists()]
        todo = sum(s.size for s in pending)
        written = written_failed = 0
        from tqdm.auto import tqdm

        bar = tqdm(total=todo, unit="rec", desc="attribot-rag batch", disable=not progress or not todo,
                   file=sys.stderr, dynamic_ncols=True, smoothing=0.1, delay=0.5)

        def on_shard(shard: Shard, rows: list[dict]) -> None:
            nonlocal written, written_failed
            if [r["index"] for r in rows] != list(range(shard.start, shard.stop)):
                raise BatchError(f"shard {shard.index}: rows do not match records {shard.start}..{shard.stop - 1}")
            write_shard(out_dir, shard.index, rows, output_format)
            written += len(rows)
            written_failed += sum(r["error"] is not None for r in rows)
            if engine == "ray":  # ray reports whole shards; local ticks per record
                bar.update(len(rows))
            bar.set_postfix(failed=written_failed, refresh=False)

        try:
            if pending and engine == "local":
                with _torch_threads(threads):
                    worker = RecordAttributor(**model_kw)
                    bar.reset(total=todo)  # the model is loaded: start the clock for records/s and ETA
                    _run_local(pending, in_path, worker, on_shard, lambda _row: bar.update(1))
            elif pending:
                _run_ray(pending, in_path, model_kw, on_shard, address, num_actors, cpus_per_actor, gpus_per_actor,
                         threads, ray_init_kwargs)
        finally:
            bar.close()
        rows, failed = _count(out_dir)
        summary = BatchSummary(
            output_dir=str(out_dir), engine=engine, records=records, ok=rows - failed, failed=failed,
            written=written, written_failed=written_failed, skipped=records - todo,
            seconds=time.perf_counter() - started,
        )
        text = json.dumps(summary.to_dict(), indent=1) + "\n"
        try:
            _atomic_write(out_dir / SUMMARY_FILE, lambda f: f.write(text.encode()))
        except OSError as exc:
            raise _write_error(out_dir / SUMMARY_FILE, exc) from exc
    return summary


# ---------------------------------------------------------------------------------------- CLI
def add_batch_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "batch", help="attribute a log of RAG answers (JSONL/Parquet) into a resumable folder of shards",
        description="Attribute every record {id, question, documents, answer} of IN into the folder OUT "
                    "(one file per shard; rerun the same command to resume an interrupted job).",
    )
    p.add_argument("input", metavar="IN", help="records: .jsonl, .parquet, or a folder of .parquet files")
    p.add_argument("output", metavar="OUT", help="output folder (created; resumed when it holds this job)")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process, one model; ray: a Ray Data actor pool (default local)")
    p.add_argument("--target", default=DEFAULT_MODEL, help=f"target model (default {DEFAULT_MODEL})")
    p.add_argument("--proxy", default=None, help="optional smaller proxy model")
    p.add_argument("--strategy", default="auto", help="a strategy preset (default auto)")
    p.add_argument("--top-k", type=int, default=5, help="citations per row (default 5)")
    p.add_argument("--shard-size", type=int, default=100, help="records per output file (default 100)")
    p.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS, default="jsonl",
                   help="output shard format (default jsonl)")
    p.add_argument("--overflow", default="error", help="error (default), drop_last or drop_lowest_score")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto; each ray actor picks its own)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (local process, or each ray actor)")
    p.add_argument("--address", default=None, help="ray cluster address (default $RAY_ADDRESS, else start Ray locally)")
    p.add_argument("--ray-cpus", type=int, default=None,
                   help="CPUs of the local Ray instance started when there is no cluster address (default: all)")
    p.add_argument("--num-actors", type=int, default=None,
                   help="ray actors, one model each (default: one per GPU, else CPUs / --cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each ray actor requests (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="GPUs each ray actor requests (default 1 when the cluster has GPUs, else 0)")
    p.add_argument("--overwrite", action="store_true", help="start over when OUT holds a job with other arguments")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so shards in flight are discarded cleanly."""


def run_batch_command(args: argparse.Namespace) -> int:
    """``attribot-rag batch``: run, print the summary; 130 / 143 on SIGINT / SIGTERM (rerun to resume)."""
    def on_term(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        summary = run_batch(
            args.input, args.output, target=args.target, proxy=args.proxy, strategy=args.strategy, top_k=args.top_k,
            shard_size=args.shard_size, output_format=args.output_format, overflow=args.overflow,
            device=args.device, dtype=args.dtype, engine=args.engine, threads=args.threads, address=args.address,
            num_actors=args.num_actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
            ray_init_kwargs={"num_cpus": args.ray_cpus} if args.ray_cpus is not None else None,
            overwrite=args.overwrite, progress=not args.no_progress,
        )
    except (KeyboardInterrupt, _Terminated) as exc:
        code = 143 if isinstance(exc, _Terminated) else 130
        print(f"attribot-rag: interrupted; every finished shard is in {args.output}: rerun the same command to resume",
              file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(summary)
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = [
    "BatchSummary", "RecordAttributor", "Shard", "add_batch_parser", "plan_shards", "read_output",
    "read_shard", "run_batch", "run_batch_command", "write_shard",
]
