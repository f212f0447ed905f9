"""The job folder protocol, and :func:`run_batch`, which drives a job through it.

OUT is a folder:

``_job.json``
    the job's identity: the input's path and fingerprint and every setting that changes the
    output. A rerun with other settings is refused unless ``overwrite``.
``part-000000.jsonl`` (or ``.parquet``), ...
    one file per shard of ``shard_size`` consecutive input records, rows in input order (see
    :mod:`attribot_rag.batch.io`). A restarted job skips the shards that exist: nothing is lost
    and nothing is written twice, however the previous run ended.
``_summary.json``
    written when the job finishes: records, ok, failed, seconds.
``_lock``
    an exclusive lock held while a job writes the folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BatchError, ConfigError, UnknownModelError, is_count, is_finite_number
from ..models import DEFAULT_MODEL, REGISTRY
from .engines import ENGINES, _run_local, _run_ray, _torch_threads
from .io import (
    _PART,
    OUTPUT_FORMATS,
    Shard,
    _part_name,
    _pyarrow,
    _read_part,
    _write_error,
    fingerprint,
    plan_shards,
    write_json,
    write_shard,
)
from .records import RecordAttributor

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
LOCK_FILE = "_lock"
JOB_VERSION = 1
_TMP = re.compile(r"\.(part-\d+\.(jsonl|parquet)|_job\.json|_summary\.json)\.[\w-]+\.tmp")  # _atomic_write's


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
    """An exclusive lock on OUT/_lock (:mod:`filelock`: ``flock`` on POSIX, ``msvcrt`` on Windows): two jobs
    never write one folder. Not waited for: a second job is refused at once. Released on any exit (the
    operating system drops the lock of a killed process)."""

    def __init__(self, out_dir: Path) -> None:
        from filelock import FileLock

        self.path = out_dir / LOCK_FILE
        self._lock = FileLock(self.path)

    def __enter__(self) -> _Lock:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout as exc:  # (a TimeoutError, so an OSError: caught first)
            raise BatchError(f"another attribot-rag batch job is writing {self.path.parent}: wait for it to finish, "
                             "or write to another folder") from exc
        except OSError as exc:
            raise BatchError(f"cannot write to the output folder {self.path.parent}: {exc.strerror or exc}; pass a "
                             "folder you can write") from exc
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


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
    write_json(job_file, job)


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
    from ..attributor import OVERFLOW_POLICIES, Strategy, check_proxy_used

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
        try:
            write_json(out_dir / SUMMARY_FILE, summary.to_dict())
        except OSError as exc:
            raise _write_error(out_dir / SUMMARY_FILE, exc) from exc
    return summary
