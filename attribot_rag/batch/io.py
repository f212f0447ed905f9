"""Batch input and output: cut the input into shards, read a shard's records, write a shard's rows atomically.

IN is a JSONL file (one record a line) or a Parquet file / folder of Parquet files. A shard is
records ``[start, stop)`` of the input; its output rows go to one file ``part-NNNNNN.jsonl`` (or
``.parquet``), written to a hidden temp name, fsynced and ``os.replace``-d into place, so a shard
file is either complete or absent. The job's other files (``_job.json``, ``_summary.json``) are
written the same way (:func:`write_json`): every such write goes through :func:`_atomic_write`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BatchError, ConfigError, InputError, is_count

OUTPUT_FORMATS = ("jsonl", "parquet")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_PART = re.compile(r"part-(\d{6,})\.(jsonl|parquet)")


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


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, atomically (the job and summary files); ``OSError`` on failure."""
    text = json.dumps(obj, indent=1) + "\n"
    _atomic_write(path, lambda f: f.write(text.encode()))


def _error_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose message cannot be built still gets a row
        text = "(no message)"
    return f"{type(exc).__name__}: {text[:2000]}"

