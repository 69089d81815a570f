"""Every bad params file or `--set` is a named ConfigError (file, key, fix), never a traceback."""

from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import TINY, write_params
from tsae_core.config import ConfigError, ExperimentConfig, load_config, parse_override
from tsae_core.runner import main


def _edit(tmp_path, old: str, new: str):
    path = write_params(tmp_path)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_yaml_1_2_floats_are_numbers(tmp_path):
    path = write_params(tmp_path, variants={"topk": {"activation": "topk", "d_sae": 32, "k": 4}})
    path.write_text(path.read_text().replace("k: 4", "k: 4\n    lr: 3e-4"))
    assert load_config(path).variants["topk"].lr == pytest.approx(3e-4)
    assert parse_override("train.lr_scale=1E1") == ("train.lr_scale", 10.0)
    assert parse_override("run.name=1e3x") == ("run.name", "1e3x")  # still a string


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    path = _edit(tmp_path, "lr_scale: 10.0", f"lr_scale: {value}")
    with pytest.raises(ConfigError, match=r"train\.lr_scale: .* not a finite number") as e:
        load_config(path)
    assert str(path) in str(e.value)
    with pytest.raises(ConfigError, match="not a finite number"):
        load_config(write_params(tmp_path), dict([parse_override(f"variants.topk.lr={value}")]))


def test_duplicate_keys_are_refused_with_their_lines(tmp_path):
    path = _edit(tmp_path, "  seed: 0\n", "  seed: 0\n  seed: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "duplicate key 'seed'" in msg and "first on line 3" in msg and "line 4" in msg and str(path) in msg


def test_non_utf8_file_is_a_named_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run:\n  name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 on line 2\); save the file as UTF-8") as e:
        load_config(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "{}\n"])
def test_empty_params_file_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="the params file is empty") as e:
        load_config(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "a b", "", "x\n"])
def test_run_name_must_be_a_plain_name(tmp_path, name):
    path = write_params(tmp_path)
    with pytest.raises(ConfigError, match=r"run\.name: .*must be a plain name"):
        load_config(path, {"run.name": name})


def test_run_directory_must_resolve_inside_out_dir(tmp_path):
    path = write_params(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(tmp_path)  # runs/tiny -> outside runs/
    with pytest.raises(ConfigError, match=r"run\.name: the run directory .* outside run\.out_dir"):
        load_config(path)


def test_variant_names_must_be_plain(tmp_path):
    path = write_params(tmp_path, variants={"..": {"activation": "topk", "d_sae": 32, "k": 4}})
    with pytest.raises(ConfigError, match=r"variants\.\.\.: .*must be a plain name"):
        load_config(path)


@pytest.mark.parametrize("entry,message", [
    ({"relu": "L1 at a low L0"}, r"run\.expected_unhealthy\.relu: .*names no variant of this run; variants: topk, contrastive"),
    ({"topk": ""}, r"run\.expected_unhealthy\.topk: .*give the reason"),
])
def test_expected_unhealthy_names_a_variant_with_a_reason(tmp_path, entry, message):
    path = write_params(tmp_path, run={**TINY["run"], "expected_unhealthy": entry})
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_an_override_may_not_create_a_variant(tmp_path):
    path = write_params(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(path, {"variants.topK.k": 8})
    msg = str(e.value)
    assert "override variants.topK.k" in msg and "no entry 'topK'" in msg and "topk, contrastive" in msg
    assert "add it to the params file" in msg
    for dotted in ("sweep.new.variant", "train.stepz", "train.steps.x", "nosection.x"):
        with pytest.raises(ConfigError, match=f"override {dotted}"):
            load_config(path, {dotted: 1})
    # keys of the schema absent from the file are fine, and so are a variant's options (checked by the variant)
    cfg = load_config(path, {"train.grad_clip": 0.5, "variants.contrastive.options.temperature": 0.2})
    assert cfg.train.grad_clip == 0.5 and cfg.variants["contrastive"].options["temperature"] == 0.2


@pytest.mark.parametrize("text", ["train.steps=[1", "train.steps=: a: b", "train.steps", "=3", "train..steps=3",
                                  "train.steps=!!python/object:os.system x"])
def test_unparsable_override_is_a_config_error(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_context_size_one_is_refused_with_the_reason(tmp_path):
    path = write_params(tmp_path, harvest={**TINY["harvest"], "context_size": 1})
    with pytest.raises(ConfigError, match=r"harvest\.context_size: must be >= 2: temporal .* neighbouring positions"):
        load_config(path)


def test_dates_and_other_yaml_types_are_refused_or_kept_as_text(tmp_path):
    path = _edit(tmp_path, "name: tiny", "name: 2020-01-01")
    assert load_config(path).run.name == "2020-01-01"
    path = _edit(tmp_path, "seed: 0", "seed: !!binary aGVsbG8=")
    with pytest.raises(ConfigError, match=r"run\.seed: bytes values are not supported"):
        load_config(path)


def test_cli_reports_bad_input_in_one_line_with_status_2(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"run:\n  name: caf\xe9\n")
    assert main(["validate", str(path)]) == 2
    assert main(["run", str(write_params(tmp_path)), "--set", "train.steps=[1"]) == 2
    assert main(["run", str(write_params(tmp_path)), "--set", "variants.topK.k=8"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 3
    assert not (tmp_path / "runs").exists(), "nothing is written for invalid parameters"


# ------------------------------------------------------------------------------------------
# Fuzzing: any params file, any override -> a valid config or a ConfigError


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.ascii_letters + string.digits + "._-/ ", max_size=8),
    st.sampled_from(["topk", "relu", "jumprelu", "batchtopk", "contrastive", "consistency", "float16", "cpu", "..",
                     "3e-4", ".inf", "yes", "~", "2020-01-01"]),
)
_keys = st.one_of(st.text("abkdlr_", max_size=4), st.none(), st.integers(0, 3), st.booleans())
_values = st.one_of(
    st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
                 max_leaves=6),
    st.dictionaries(_keys, _scalars, min_size=2, max_size=4),  # a whole section of odd keys
)
_paths = st.lists(st.sampled_from(["run", "name", "seed", "seeds", "harvest", "context_size", "variants", "topk", "k",
                                   "d_sae", "lr", "options", "window", "train", "steps", "adam_betas", "sweep", "grid",
                                   "variant", "source", "synthetic", "d_model", "kind", "eval", "plot", "dpi", "x"]),
                  min_size=1, max_size=4)


def _mutate(data, path, value):
    node = data
    for part in path[:-1]:
        if not isinstance(node, dict):
            return data
        node = node.setdefault(part, {})
    if isinstance(node, dict):
        node[path[-1]] = value
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(_paths, _values), max_size=4))
def test_fuzzed_params_files_validate_or_raise_config_error(tmp_path, edits):
    import copy

    data = copy.deepcopy(TINY)
    for path, value in edits:
        data = _mutate(data, path, value)
    file = tmp_path / "fuzz.yaml"
    file.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        cfg = load_config(file)
    except ConfigError:
        return
    assert isinstance(cfg, ExperimentConfig)
    cfg.hash()  # a valid config is usable: hashable and serialisable


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_fuzzed_yaml_text_validates_or_raises_config_error(tmp_path, text):
    file = tmp_path / "fuzz.yaml"
    file.write_bytes(text.encode("utf-8", "replace"))
    try:
        load_config(file)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(string.ascii_letters + "._", max_size=24), raw=st.text(max_size=24))
def test_fuzzed_overrides_validate_or_raise_config_error(tmp_path, key, raw):
    file = write_params(tmp_path)
    try:
        load_config(file, dict([parse_override(f"{key}={raw}")]))
    except ConfigError:
        pass
