"""Params files are validated completely, with errors that name the key and the file."""

import pytest

from tsae_core.config import ConfigError, load_config, parse_override, project_root


def write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_shipped_params_files_are_valid():
    shipped = sorted(p.stem for p in (project_root() / "params").glob("*.yaml"))
    assert {"default", "synthetic", "ci", "gpt2", "pythia-70m", "gemma-2-2b"} <= set(shipped)
    for name in shipped:
        cfg = load_config(f"params/{name}.yaml")
        assert cfg.run.name == name
        assert len(cfg.variants) >= 3
    assert load_config("params/default.yaml").source.kind == "tinylm"
    assert load_config("params/gpt2.yaml").source.hook_name == "blocks.8.hook_resid_post"
    assert load_config("params/pythia-70m.yaml").source.hf.model_name == "pythia-70m-deduped"


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "train:\n  stepz: 10\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train.stepz" in str(e.value) and str(p) in str(e.value)
    assert "steps" in str(e.value)  # the allowed keys are listed


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key trian"):
        load_config(write(tmp_path, "trian: {}\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  steps: ten\n", "train.steps: expected an integer"),
        ("train:\n  steps: -5\n", "train.steps: must be > 0"),
        ("train:\n  decay_fraction: 1.5\n", "train.decay_fraction"),
        ("variants:\n  a: {activation: gelu}\n", "variants.a.activation: must be one of"),
        ("variants:\n  a: {k: -1}\n", "variants.a.k"),
        ("variants:\n  a: {k: 600, d_sae: 512}\n", "variants.a.k"),
        ("variants:\n  a: {architecture: nope}\n", "unknown architecture 'nope'"),
        ("variants:\n  a: {options: {window: 3}}\n", "takes no options"),
        ("source:\n  synthetic: {fast_max_rate: 2.0}\n", "source.synthetic.fast_max_rate"),
        ("harvest:\n  dtype: float8\n", "harvest.dtype"),
        ("run:\n  device: tpu\n", "run.device"),
    ],
)
def test_bad_values_are_named(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("(", r"\(")):
        load_config(write(tmp_path, text))


def test_overrides_apply_and_are_validated():
    cfg = load_config("params/ci.yaml", {"train.steps": 7, "variants.topk.k": 2})
    assert cfg.train.steps == 7 and cfg.variants["topk"].k == 2
    with pytest.raises(ConfigError, match="train.nope"):
        load_config("params/ci.yaml", {"train.nope": 1})


def test_parse_override_reads_yaml_values():
    assert parse_override("train.steps=200") == ("train.steps", 200)
    assert parse_override("run.name=abc") == ("run.name", "abc")
    assert parse_override("train.adam_betas=[0.9, 0.99]") == ("train.adam_betas", [0.9, 0.99])
    with pytest.raises(ConfigError):
        parse_override("train.steps")


def test_missing_params_file_is_explained():
    with pytest.raises(ConfigError, match="not found"):
        load_config("params/does-not-exist.yaml")


def test_hash_depends_on_sections():
    a = load_config("params/ci.yaml")
    b = load_config("params/ci.yaml", {"plot.dpi": 200})
    assert a.hash("source", "harvest") == b.hash("source", "harvest")
    assert a.hash() != b.hash()
