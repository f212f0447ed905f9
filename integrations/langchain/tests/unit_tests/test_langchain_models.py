"""The shared model cache: one load per model as it would load, however device and dtype are spelled."""

from __future__ import annotations

import torch
from attribot_rag.models import default_device, default_dtype

from langchain_attribot import AttribotCitations, AttribotDocumentFilter, ChatAttribot, shared_attributor, shared_model


def test_dtype_spellings_share_one_load(fake_loads):
    a = shared_model("cache-dtype", dtype="fp32")
    assert shared_model("cache-dtype", dtype=torch.float32) is a
    assert shared_model("cache-dtype", dtype="float32") is a
    assert len(fake_loads) == 1
    assert shared_model("cache-dtype", dtype="bf16") is not a  # other weights: a second load
    assert shared_model("cache-dtype", dtype=torch.bfloat16) is shared_model("cache-dtype", dtype="bfloat16")
    assert len(fake_loads) == 2


def test_default_device_and_dtype_share_one_load(fake_loads):
    dev = default_device()
    a = shared_model("cache-default")
    assert shared_model("cache-default", device=dev) is a
    assert shared_model("cache-default", device=dev, dtype=default_dtype(dev)) is a
    assert shared_model("cache-default", dtype=default_dtype(dev)) is a
    assert len(fake_loads) == 1


def test_components_with_equivalent_settings_share_model_and_attributor(fake_loads):
    step = AttribotCitations("cache-components", device="cpu", dtype="fp32")
    same = AttribotCitations("cache-components", device="cpu", dtype=torch.float32, strategy="hierarchical")
    assert same.attributor is step.attributor  # "auto" is "hierarchical"
    chat = ChatAttribot(model="cache-components", device="cpu", dtype="float32")
    assert chat._loaded() is step.attributor.target.loaded
    doc_filter = AttribotDocumentFilter("cache-components", device="cpu", dtype=torch.float32)
    assert doc_filter.scorer.resolve().target.loaded is step.attributor.target.loaded
    assert shared_attributor("cache-components", device="cpu", dtype="fp32") is step.attributor
    assert len(fake_loads) == 1
