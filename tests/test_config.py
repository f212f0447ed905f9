"""AttributorConfig (checked without loading), shared_attributor (one per config per process) and
Attributor.attribute's own lock."""

import threading

import pytest
import torch


@pytest.fixture
def no_loading(monkeypatch):
    from attribot_rag.models import loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a config loaded a model"))


@pytest.fixture
def fake_loads(monkeypatch, tiny):
    """Named models load as (distinct LoadedModel wrappers of) the tiny model; forgotten afterwards."""
    from attribot_rag import LoadedModel, clear_model_cache
    from attribot_rag.models import loading

    made = []

    def fake(name, *, device=None, dtype=None):
        made.append(LoadedModel(name=str(name), model=tiny.model, tokenizer=tiny.tokenizer))
        return made[-1]

    monkeypatch.setattr(loading, "load_model", fake)
    yield made
    clear_model_cache(*made)


BAD = [
    ({"strategy": "hierarchial"}, "ConfigError", "unknown strategy 'hierarchial'"),
    ({"strategy": "proxy-prune"}, "ConfigError", "needs a proxy model"),
    ({"strategy": ["auto"]}, "ConfigError", "pass a preset name or a Strategy"),
    ({"dtype": "fp33"}, "DeviceError", "unknown dtype 'fp33'"),
    ({"device": "gpu"}, "DeviceError", "unknown device 'gpu'"),
    ({"device": 3.5}, "DeviceError", "pass a string such as 'cpu'"),
    ({"model": 3}, "ConfigError", "model=int: pass an embedded short name"),
    ({"proxy": 3, "strategy": "proxy"}, "ConfigError", "proxy=int"),
    ({"template": "Q: {question}"}, "ConfigError", "template=str: pass an attribot_rag.PromptTemplate"),
    ({"max_batch_size": 0}, "ConfigError", "max_batch_size must be an int >= 1"),
    ({"max_sentence_tokens": 2.5}, "ConfigError", "max_sentence_tokens must be an int >= 1"),
    ({"overflow": "truncate"}, "ConfigError", "unknown overflow policy 'truncate'"),
    ({"progress": "yes"}, "ConfigError", "progress must be True or False"),
]


@pytest.mark.parametrize("settings,error,message", BAD, ids=[str(s) for s, _, _ in BAD])
def test_bad_settings_fail_at_construction_without_loading(no_loading, settings, error, message):
    import attribot_rag
    from attribot_rag import Attributor, AttributorConfig

    with pytest.raises(getattr(attribot_rag, error), match=message):
        AttributorConfig(**settings)
    with pytest.raises(getattr(attribot_rag, error), match=message):  # the same check, the same words
        Attributor(**{"target" if k == "model" else k: v for k, v in settings.items()})


def test_device_and_dtype_are_refused_with_a_model_object(no_loading, tiny):
    from attribot_rag import AttributorConfig, ConfigError, DeviceError, ModelError

    with pytest.raises(ConfigError, match="device= and dtype= apply to models loaded by name"):
        AttributorConfig(tiny, dtype="fp32")
    assert issubclass(DeviceError, ConfigError) and issubclass(DeviceError, ModelError)


def test_equal_configs_are_those_that_build_the_same_attributor(no_loading, tiny):
    from attribot_rag import PRESETS, AttributorConfig, PromptTemplate

    a = AttributorConfig("m", device="cpu", dtype="fp32")
    assert a == AttributorConfig("m", device="cpu", dtype=torch.float32, strategy="hierarchical",
                                 template=PromptTemplate())
    assert a == AttributorConfig("m", device="cpu", dtype="float32", strategy=PRESETS["hierarchical"])
    assert len({a, AttributorConfig("m", device="cpu", dtype="fp32")}) == 1
    assert a != AttributorConfig("m", device="cpu", dtype="bf16")
    assert a != a.replace(strategy="batched") and a.replace(strategy="batched").strategy == "batched"
    assert AttributorConfig(tiny) == AttributorConfig(tiny) != AttributorConfig((tiny.model, tiny.tokenizer))


def test_build_makes_an_attributor_with_the_settings(tiny):
    from attribot_rag import Attributor, AttributorConfig

    att = AttributorConfig(tiny, strategy="batched", max_batch_size=3, overflow="drop_last").build()
    assert isinstance(att, Attributor) and att.target.loaded is tiny
    assert att.strategy.name == "batched" and att.target.engine.max_batch_size == 3 and att.overflow == "drop_last"


def test_shared_attributor_is_one_per_config_and_built_once(fake_loads):
    from attribot_rag import AttributorConfig, clear_model_cache, clear_shared_attributors, shared_attributor

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        shared_attributor(AttributorConfig("cfg-shared", device="cpu", dtype="fp32")))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = results[0]
    assert all(r is first for r in results) and len(fake_loads) == 1
    assert shared_attributor(model="cfg-shared", device="cpu", dtype=torch.float32) is first  # keywords work too
    other = shared_attributor(AttributorConfig("cfg-shared", device="cpu", dtype="fp32", strategy="batched"))
    assert other is not first and other.target.loaded is first.target.loaded and len(fake_loads) == 1
    clear_shared_attributors()
    again = shared_attributor(AttributorConfig("cfg-shared", device="cpu", dtype="fp32"))
    assert again is not first and again.target.loaded is first.target.loaded  # the model stays shared
    clear_model_cache(again.target.loaded)  # forgets the model and every attributor on it
    assert shared_attributor(AttributorConfig("cfg-shared", device="cpu", dtype="fp32")) is not again
    assert len(fake_loads) == 2


def test_shared_attributor_refuses_odd_arguments(no_loading):
    from attribot_rag import AttributorConfig, ConfigError, shared_attributor

    with pytest.raises(ConfigError, match="not both"):
        shared_attributor(AttributorConfig("m"), strategy="batched")
    with pytest.raises(ConfigError, match="takes an AttributorConfig"):
        shared_attributor("m")


def test_attribute_takes_the_models_lock(tiny, sources):
    """Another holder of the model's lock (a LangChain or LlamaIndex call, a generation) makes it wait."""
    from attribot_rag import Attributor, model_lock

    att = Attributor(tiny, strategy="documents")
    done = threading.Event()
    with model_lock(tiny):
        t = threading.Thread(target=lambda: (att.attribute("Who built it?", sources, "Gustave Eiffel."), done.set()))
        t.start()
        assert not done.wait(0.5)
    t.join(60)
    assert done.is_set()
    with att.locked():  # reentrant: a caller may hold it around its own calls
        att.attribute("Who built it?", sources, "Gustave Eiffel.")
