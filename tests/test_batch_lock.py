"""The batch job-folder lock (OUT/_lock) is a :mod:`filelock` lock: refused at once while another process or
another job in this process holds it, free again once the holder exits (issue #18)."""

import subprocess
import sys
import textwrap

import pytest

from attribot_rag import BatchError
from attribot_rag.batch import LOCK_FILE, _Lock

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from attribot_rag.batch import _Lock
    with _Lock(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.readline()
""")


def test_a_lock_held_by_another_process_refuses_then_frees(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BatchError, match="another attribot-rag batch job is writing"), _Lock(tmp_path):
            pass
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    with _Lock(tmp_path):  # the holder is gone: free
        pass
    assert [p.name for p in tmp_path.iterdir()] in ([LOCK_FILE], [])  # (Windows removes its lock file)


def test_the_lock_is_not_reentrant_across_jobs_and_frees_on_exit(tmp_path):
    with _Lock(tmp_path), pytest.raises(BatchError, match="another attribot-rag batch job"), _Lock(tmp_path):
        pass
    with _Lock(tmp_path):
        pass


def test_an_unwritable_folder_is_a_batch_error(tmp_path):
    (tmp_path / "file").write_text("x")  # OUT under a file: the lock file cannot be created
    with pytest.raises(BatchError, match="cannot write to the output folder"), _Lock(tmp_path / "file" / "out"):
        pass
