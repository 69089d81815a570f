"""SAEs brought in by `load_from` are checked as they are imported, by the rules export applies too
(issue 31, cases 5, 6 and 9), a damaged source is to be restored, not retrained (case 3), and an
export never writes over the SAE it reads (case 15)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ci_config
from tests.interop_cases import D_IN, D_SAE, random_sae
from tests.test_interop import _saelens_folder
from tsae_core.imported import ImportRefused
from tsae_core.interop import export_saelens
from tsae_core.io import sha256_file
from tsae_core.runner import main
from tsae_core.sae import save_sae
from tsae_core.train import train_variant


def _import(harvested, tmp_path, folder):
    """Import `folder` as the variant `mine` of a CI run (the train stage's import)."""
    _, store = harvested
    cfg = ci_config(tmp_path / "runs", **{"variants": {"mine": {"load_from": str(folder)}}, "sweep": {}})
    return train_variant(cfg, "mine", store, cfg.run_dir, progress=False)


def test_a_saelens_jumprelu_with_negative_thresholds_is_refused_at_import(harvested, tmp_path):
    """Case 5: tsae's JumpReLU (pre 1[pre > theta]) and SAELens's (relu(pre) 1[pre > theta]) differ for theta < 0."""
    assert D_IN == harvested[1].d_in
    threshold = 0.3 * torch.rand(D_SAE)
    threshold[:5] = -0.2
    folder = tmp_path / "jumprelu"
    _saelens_folder(folder, "jumprelu", tensors=None)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "sae_weights.safetensors"))
    save_file({**tensors, "threshold": threshold}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ImportRefused) as e:
        _import(harvested, tmp_path, folder)
    message = str(e.value)
    assert "variants.mine.load_from" in message and str(folder / "sae_weights.safetensors") in message
    assert "tensor threshold has 5 negative values" in message and "different codes" in message
    assert not (tmp_path / "runs" / "ci" / "saes" / "mine").exists(), "nothing imported"


@pytest.mark.parametrize("k", [0, 1000, -3, 2.5])
def test_a_saelens_topk_with_k_out_of_range_is_refused_at_import_naming_the_file_and_key(harvested, tmp_path, k):
    """Case 6: k 0 was evaluated at L0 1 and called healthy; 1000 and -3 crashed evaluate."""
    folder = tmp_path / "topk"
    _saelens_folder(folder, "topk", k=k)
    with pytest.raises(ImportRefused) as e:
        _import(harvested, tmp_path, folder)
    message = str(e.value)
    assert f"{folder / 'cfg.json'}: key k is {k!r}" in message and f"from 1 to {D_SAE}" in message, message


@pytest.mark.parametrize("fmt,tensor,value", [("saelens", "W_enc", float("nan")), ("saelens", "b_dec", float("inf")),
                                              ("tsae", "W_dec", float("nan"))])
def test_non_finite_weights_are_refused_at_import_naming_the_tensor(harvested, tmp_path, fmt, tensor, value):
    """Case 9: evaluate died in scikit-learn (`Input X contains NaN`), naming no file."""
    folder = tmp_path / "bad"
    if fmt == "saelens":
        tensors = _saelens_folder(folder, "standard")
        from safetensors.torch import save_file

        tensors[tensor].view(-1)[0] = value
        save_file(tensors, str(folder / "sae_weights.safetensors"))
    else:
        sae = random_sae("topk", source={})
        with torch.no_grad():
            getattr(sae, tensor)[0, 0] = value
        save_sae(sae, folder)
    with pytest.raises(ImportRefused) as e:
        _import(harvested, tmp_path, folder)
    weights = folder / ("sae_weights.safetensors" if fmt == "saelens" else "sae.safetensors")
    assert f"{weights}: tensor {tensor} holds non-finite values (1 of" in str(e.value), str(e.value)


def test_export_refuses_non_finite_weights_by_the_same_rule(tmp_path):
    sae = random_sae("topk")
    with torch.no_grad():
        sae.W_enc[1, 2] = float("nan")
    save_sae(sae, tmp_path / "sae")
    result = export_saelens(tmp_path / "sae", tmp_path / "out")
    assert result.exported == [] and "tensor W_enc holds non-finite values (1 of" in result.refused[0][1]


@pytest.mark.parametrize("where", ["itself", "its run", "its saes folder"])
def test_export_onto_its_own_source_is_refused_and_deletes_nothing(tmp_path, capsys, where):
    """Case 15: `tsae export runs/R/saes/topk --format saelens runs/R/saes/topk --force` deleted the trained SAE."""
    run = tmp_path / "run"
    sae_dir = run / "saes" / "topk"
    save_sae(random_sae("topk"), sae_dir)
    before = sha256_file(sae_dir / "sae.safetensors")
    source, out = {"itself": (sae_dir, sae_dir), "its run": (run, run / "saes"), "its saes folder": (sae_dir, run / "saes")}[where]
    assert main(["export", str(source), "--format", "saelens", str(out), "--force"]) == 1
    err = capsys.readouterr().err
    assert "tsae export: not exporting topk: the destination" in err and "give OUT a folder outside" in err, err
    assert sha256_file(sae_dir / "sae.safetensors") == before and sorted(p.name for p in sae_dir.iterdir()) == ["cfg.json",
                                                                                                            "sae.safetensors"]


def test_a_damaged_import_source_is_restored_not_retrained(harvested, tmp_path):
    """An SAE named by load_from belongs to no stage of this run: its fix is to restore the folder."""
    _, store = harvested
    folder = tmp_path / "mine"
    save_sae(random_sae("topk", source={}), folder)  # an SAE kept outside any run
    weights = folder / "sae.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0xFF
    weights.write_bytes(bytes(data))
    cfg = ci_config(tmp_path / "runs", **{"variants": {"mine": {"load_from": str(folder)}}, "sweep": {}})
    with pytest.raises(ImportRefused) as e:
        train_variant(cfg, "mine", store, cfg.run_dir, progress=False)
    message = str(e.value)
    assert "variants.mine.load_from" in message and str(weights) in message and f"restore {folder}" in message, message
    assert "retrain it" not in message
