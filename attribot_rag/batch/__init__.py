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

The package's modules:

- :mod:`~attribot_rag.batch.io`: shards of the input, reading records, writing rows atomically;
- :mod:`~attribot_rag.batch.records`: the record schema, a record in, a row out (:class:`RecordAttributor`);
- :mod:`~attribot_rag.batch.job`: the job folder protocol and :func:`run_batch`;
- :mod:`~attribot_rag.batch.engines`: the local and Ray engines.

The ``attribot-rag batch`` command line (``add_batch_parser``, ``run_batch_command``) lives in
:mod:`attribot_rag.cli`.
"""

from __future__ import annotations

# besides __all__, the constants and the helpers tests use stay importable from here, as before the split
from .engines import ENGINES  # noqa: F401
from .io import (  # noqa: F401
    OUTPUT_FORMATS,
    Shard,
    fingerprint,
    input_format,
    parquet_schema,
    plan_shards,
    read_output,
    read_shard,
    write_shard,
)
from .job import JOB_FILE, JOB_VERSION, LOCK_FILE, SUMMARY_FILE, BatchSummary, _Lock, run_batch  # noqa: F401
from .records import REQUIRED_FIELDS, RecordAttributor, _check_record  # noqa: F401

__all__ = [
    "BatchSummary", "RecordAttributor", "Shard", "plan_shards", "read_output",
    "read_shard", "run_batch", "write_shard",
]
