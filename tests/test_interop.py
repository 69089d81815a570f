"""SAELens interop without SAELens installed: the exported folder's cfg.json and tensors, export then
import giving back the same SAE, which architectures are refused (decided by their inference), the
atomic writes, and SAELens-format folders written by hand (the real library: test_interop_saelens.py)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.interop_cases import ACTIVATIONS, D_IN, D_SAE, LM_SOURCE, SCALE, K, max_rel_diff, random_sae, raw_activations
from tsae_core import interop
from tsae_core.config import load_config
from tsae_core.interop import NotRepresentable, export_saelens, saelens_refusal
from tsae_core.io import read_json
from tsae_core.loading import load_sae
from tsae_core.runner import main
from tsae_core.sae import SAE, SAEConfig, SAEFileError, save_sae
from tsae_core.variants.registry import architectures, build_sae, sae_config

SAELENS_ARCHITECTURE = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
PLAIN = {"standard", "consistency", "contrastive", "matryoshka", "orthogonal"}
"""The architectures whose inference is the token-wise SAE's (checked below from their behaviour)."""


def _no_temporary_entries(directory) -> bool:
    return not [p.name for p in directory.iterdir() if p.name.startswith(".")]


# -- the exported folder ----------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_exported_cfg_json_keys_and_values(tmp_path, activation):
    sae = random_sae(activation)
    save_sae(sae, tmp_path / "sae")
    result = export_saelens(tmp_path / "sae", tmp_path / "out")
    assert result.exported == [("sae", tmp_path / "out")] and not result.refused
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cfg.json", "sae_weights.safetensors"]

    cfg = read_json(tmp_path / "out" / "cfg.json")
    architecture = SAELENS_ARCHITECTURE[activation]
    base = {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations", "reshape_activations",
            "metadata", "architecture"}
    assert set(cfg) == base | ({"k", "rescale_acts_by_decoder_norm"} if architecture == "topk" else set())
    assert cfg["architecture"] == architecture
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["device"]) == (D_IN, D_SAE, "float32", "cpu")
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["reshape_activations"] == "none"
    if architecture == "topk":
        assert cfg["k"] == K and cfg["rescale_acts_by_decoder_norm"] is False
    meta = cfg["metadata"]
    assert meta["sae_lens_version"].startswith("6.")  # SAELens reads it as its 6.x format, not as a pre-6 config
    assert meta["model_name"] == "gpt2" and meta["hook_name"] == "blocks.6.hook_resid_post"
    assert meta["context_size"] == 128 and meta["prepend_bos"] is True and meta["exclude_special_tokens"] is True
    assert meta["dataset_path"] == LM_SOURCE["dataset"] and meta["model_from_pretrained_kwargs"] == {}
    tsae = meta["tsae"]
    assert tsae["activation"] == activation and tsae["architecture"] == "standard"
    assert tsae["activation_scaling_factor"] == SCALE and tsae["activation_scaling_factor_folded"] is True
    assert tsae["weights_sha256"] == read_json(tmp_path / "sae" / "cfg.json")["weights_sha256"]

    tensors = load_file(str(tmp_path / "out" / "sae_weights.safetensors"))
    assert set(tensors) == {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if architecture == "jumprelu" else set())
    assert all(t.dtype == torch.float32 for t in tensors.values())
    s = torch.tensor(SCALE, dtype=torch.float64)
    assert torch.equal(tensors["W_enc"], (sae.W_enc.detach().double() * s).float())
    assert torch.equal(tensors["b_enc"], sae.b_enc.detach())
    assert torch.equal(tensors["W_dec"], (sae.W_dec.detach().double() / s).float())
    assert torch.equal(tensors["b_dec"], (sae.b_dec.detach().double() / s).float())
    if architecture == "jumprelu":
        assert torch.allclose(tensors["threshold"], sae.activation.threshold.detach())
        if activation == "batchtopk":  # one threshold for every latent
            assert bool((tensors["threshold"] == tensors["threshold"][0]).all()) and float(tensors["threshold"][0]) > 0


def test_synthetic_source_has_no_model_metadata(tmp_path):
    save_sae(random_sae("topk", source={"kind": "synthetic", "d_model": D_IN, "context_size": 32}), tmp_path / "sae")
    export_saelens(tmp_path / "sae", tmp_path / "out")
    meta = read_json(tmp_path / "out" / "cfg.json")["metadata"]
    assert "model_name" not in meta and "hook_name" not in meta and "dataset_path" not in meta
    assert meta["prepend_bos"] is False and meta["context_size"] == 32
    assert meta["tsae"]["source"]["kind"] == "synthetic"


# -- export then import -----------------------------------------------------------------------------
@pytest.mark.parametrize("architecture,activation", [("standard", a) for a in ACTIVATIONS]
                         + [("matryoshka", "batchtopk"), ("orthogonal", "topk"), ("consistency", "jumprelu"),
                            ("contrastive", "topk")])
def test_export_then_import_gives_the_same_sae(tmp_path, architecture, activation):
    options = {"prefixes": [8, 16]} if architecture == "matryoshka" else {}
    sae = random_sae(activation, architecture, options)
    save_sae(sae, tmp_path / "sae")
    export_saelens(tmp_path / "sae", tmp_path / "out")
    original, imported = load_sae(tmp_path / "sae"), load_sae(tmp_path / "out")
    assert type(imported) is SAE and not imported.training
    assert imported.cfg.activation == ("jumprelu" if activation == "batchtopk" else activation)
    assert imported.cfg.activation_scaling_factor == 1.0 and imported.cfg.k == (K if activation == "topk" else None)
    assert imported.cfg.source["kind"] == "saelens" and imported.cfg.source["tsae"]["name"] == "sae"
    assert imported.cfg.source["model"] == "gpt2" and imported.cfg.source["context_size"] == 128

    x = raw_activations()
    with torch.no_grad():
        a, b = original(x), imported(x)
    diff, rel = max_rel_diff(b.recon, a.recon)
    print(f"\n{architecture}/{activation}: tsae -> SAELens folder -> tsae, recon max |diff| {diff:.3g} (relative {rel:.2g})")
    assert rel <= 1e-5
    assert torch.equal(a.features != 0, b.features != 0)
    assert torch.allclose(a.features, b.features, rtol=1e-5, atol=1e-5 * float(a.features.abs().max()))
    assert float((a.features != 0).sum(-1).float().mean()) > 0


# -- what SAELens can represent ----------------------------------------------------------------------
def _one_variant_per_architecture() -> dict[str, object]:
    variants = load_config("params/ci.yaml").variants
    found: dict[str, object] = {}
    for v in variants.values():
        found.setdefault(v.architecture, v)
    return found


@torch.no_grad()
def test_every_architecture_is_classified_by_its_inference():
    """An architecture is exported exactly when its forward pass at inference equals a standard SAE's
    built from its encoder, decoder and activation: every parameter is randomised first, so that
    temporal terms that start at zero (a gain, a kernel, a position table) act."""
    variants = _one_variant_per_architecture()
    assert set(variants) == set(architectures()), "params/ci.yaml should hold every architecture"
    g = torch.Generator().manual_seed(0)
    B, T = 4, 16
    x = raw_activations(B * T, seed=3).view(B, T, D_IN)
    doc_start = torch.zeros(B, T, dtype=torch.bool)
    doc_start[:, 0], doc_start[0, 5], doc_start[1, 9], doc_start[2, 3] = True, True, True, True
    mask = torch.ones(B, T, dtype=torch.bool)
    decisions = {}
    for architecture, v in sorted(variants.items()):
        cfg = sae_config(v, D_IN, SCALE, {"kind": "synthetic"})
        sae = build_sae(cfg)
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        if cfg.activation == "batchtopk":
            sae.activation.threshold.fill_(0.2)
        sae.eval()
        standard = build_sae(SAEConfig(**{**cfg.__dict__, "architecture": "standard", "options": {}})).eval()
        try:
            standard.load_state_dict({n: t for n, t in sae.state_dict().items() if n in standard.state_dict()}, strict=True)
        except RuntimeError:  # per-position tensors (the crosscoder): no token-wise SAE to compare with
            same = False
        else:
            out, ref = sae(x, mask, doc_start), standard(x, mask, doc_start)
            same = torch.equal(out.features != 0, ref.features != 0) and max_rel_diff(out.recon, ref.recon)[1] <= 1e-6
            if not same:
                assert max_rel_diff(out.recon, ref.recon)[1] > 1e-3 or not torch.equal(out.features != 0, ref.features != 0)
        decisions[architecture] = same
        assert same == (saelens_refusal(architecture) is None), f"{architecture}: inference equal to the standard SAE's: {same}"
    assert {a for a, same in decisions.items() if same} == PLAIN


def _write_run(tmp_path, names):
    run = tmp_path / "run"
    for name, (architecture, activation) in names.items():
        options = {"window": 2} if architecture == "pooled" else {}
        save_sae(random_sae(activation, architecture, options), run / "saes" / name)
    return run


def test_run_export_writes_the_plain_saes_and_refuses_temporal_ones(tmp_path, capsys):
    run = _write_run(tmp_path, {"topk": ("standard", "topk"), "orthogonal": ("orthogonal", "topk"),
                                "pooled": ("pooled", "topk"), "predictive": ("predictive", "topk")})
    (run / "saes" / "collapsed").mkdir()
    (run / "saes" / "collapsed" / "failed.json").write_text("{}")
    out = tmp_path / "out"
    assert main(["export", str(run), "--format", "saelens", str(out)]) == 1
    printed = capsys.readouterr()
    assert "exported topk" in printed.out and "exported orthogonal" in printed.out
    err = printed.err
    assert "not exported to SAELens" in err and "exported: orthogonal, topk" in err
    assert "pooled: architecture 'pooled': its encoder reads other tokens of the document" in err
    assert "predictive: architecture 'predictive': its forward pass is not the token-wise" in err
    assert "collapsed: its training failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["orthogonal", "topk"]
    assert json.loads((out / "orthogonal" / "cfg.json").read_text())["metadata"]["tsae"]["architecture"] == "orthogonal"
    assert set(load_file(str(out / "orthogonal" / "sae_weights.safetensors"))) == {"W_enc", "b_enc", "W_dec", "b_dec"}

    # an existing folder is never overwritten without --force, and nothing is written then
    before = (out / "topk" / "sae_weights.safetensors").stat().st_mtime_ns
    assert main(["export", str(run), "--format", "saelens", str(out)]) == 1
    assert "already exist" in capsys.readouterr().err
    assert (out / "topk" / "sae_weights.safetensors").stat().st_mtime_ns == before
    assert main(["export", str(run), "--format", "saelens", str(out), "--force"]) == 1  # pooled is still refused
    assert sorted(p.name for p in out.iterdir()) == ["orthogonal", "topk"]


def test_a_temporal_sae_is_refused_with_the_reason(tmp_path, capsys):
    run = _write_run(tmp_path, {"pooled": ("pooled", "topk")})
    assert main(["export", str(run / "saes" / "pooled"), "--format", "saelens", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "pooled: architecture 'pooled': its encoder reads other tokens of the document, while a SAELens SAE" in err
    assert "exported: none" in err
    assert not (tmp_path / "out").exists() and _no_temporary_entries(tmp_path)
    with pytest.raises(NotRepresentable, match="encoder reads other tokens"):
        interop.saelens_tensors(load_sae(run / "saes" / "pooled"))


def test_export_of_a_plain_sae_prints_and_exits_0(tmp_path, capsys):
    run = _write_run(tmp_path, {"relu": ("standard", "relu")})
    assert main(["export", str(run), "--format", "saelens", str(tmp_path / "out")]) == 0
    assert "exported relu" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nowhere"), "--format", "saelens", str(tmp_path / "o2")]) == 1
    assert "neither an SAE folder" in capsys.readouterr().err


def test_export_is_atomic(tmp_path, monkeypatch):
    save_sae(random_sae("topk"), tmp_path / "sae")
    export_saelens(tmp_path / "sae", tmp_path / "out" / "topk")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "topk").iterdir()}

    def broken_write_json(path, obj, stamp=None):
        raise OSError("disk went away")

    monkeypatch.setattr(interop, "write_json", broken_write_json)
    with pytest.raises(OSError, match="disk went away"):  # a new folder: nothing appears
        export_saelens(tmp_path / "sae", tmp_path / "out" / "new")
    with pytest.raises(OSError, match="disk went away"):  # a replaced folder: the old one stays
        export_saelens(tmp_path / "sae", tmp_path / "out" / "topk", force=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["topk"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "topk").iterdir()} == before


# -- SAELens folders written by hand -------------------------------------------------------------------
def _saelens_folder(directory, architecture="standard", tensors=None, **cfg):
    g = torch.Generator().manual_seed(5)
    tensors = tensors or {"W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5, "b_enc": 0.1 * torch.randn(D_SAE, generator=g),
                          "W_dec": torch.randn(D_SAE, D_IN, generator=g) / D_IN**0.5, "b_dec": torch.randn(D_IN, generator=g)}
    if architecture == "jumprelu" and "threshold" not in tensors:
        tensors["threshold"] = 0.3 * torch.rand(D_SAE, generator=g)
    directory.mkdir(parents=True)
    save_file(tensors, str(directory / "sae_weights.safetensors"))
    body = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"sae_lens_version": "6.54.12", "model_name": "gpt2", "hook_name": "blocks.0.hook_resid_pre"},
            "architecture": architecture, **cfg}
    (directory / "cfg.json").write_text(json.dumps(body))
    return tensors


def _saelens_reference(t, x, architecture, k=None, apply_b_dec_to_input=True, rescale=False):
    """SAELens 6's inference formulas, written out: (codes, reconstruction)."""
    pre = (x - t["b_dec"] * apply_b_dec_to_input) @ t["W_enc"] + t["b_enc"]
    norms = t["W_dec"].norm(dim=-1)
    if rescale:
        pre = pre * norms
    if architecture == "topk":
        values, idx = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, values.relu())
    elif architecture == "jumprelu":
        f = pre.relu() * (pre > t["threshold"])
    else:
        f = pre.relu()
    return f, (f / norms if rescale else f) @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("architecture,cfg", [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("topk", {"k": K}),
    ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
])
def test_saelens_folder_loads_as_the_equivalent_tsae_sae(tmp_path, architecture, cfg):
    t = _saelens_folder(tmp_path / "sl", architecture, **cfg)
    sae = load_sae(tmp_path / "sl")
    assert type(sae) is SAE and not sae.training and sae.cfg.activation_scaling_factor == 1.0
    assert sae.cfg.activation == {"standard": "relu"}.get(architecture, architecture)
    assert sae.cfg.source["kind"] == "saelens" and sae.cfg.source["hook_name"] == "blocks.0.hook_resid_pre"
    x = torch.randn(256, D_IN) * 3 + 1
    f, recon = _saelens_reference(t, x, architecture, cfg.get("k"), cfg.get("apply_b_dec_to_input", True),
                                  cfg.get("rescale_acts_by_decoder_norm", False))
    out = sae(x)
    assert max_rel_diff(out.recon, recon)[1] <= 1e-5
    assert torch.equal(out.features != 0, f != 0)


@pytest.mark.parametrize("architecture,cfg,tensors,match", [
    ("gated", {}, None, "architecture 'gated' has no tsae counterpart"),
    ("standard", {"normalize_activations": "layer_norm"}, None, "normalises each input at run time"),
    ("standard", {"normalize_activations": "expected_average_only_in"}, None, "fold_activation_norm_scaling_factor"),
    ("standard", {"metadata": {"sae_lens_version": "5.9.1"}}, None, "SAELens 5.9.1"),
    ("standard", {"metadata": {}}, None, "before 6.0"),
    ("standard", {}, {"W_enc": torch.zeros(D_IN, D_SAE), "b_enc": torch.zeros(D_SAE), "W_dec": torch.zeros(D_SAE, D_IN),
                      "b_dec": torch.zeros(D_IN), "extra": torch.zeros(3)}, "the file has"),
])
def test_unsupported_saelens_folders_are_refused(tmp_path, architecture, cfg, tensors, match):
    _saelens_folder(tmp_path / "sl", architecture, tensors=tensors, **cfg)
    with pytest.raises(NotRepresentable, match=match):
        load_sae(tmp_path / "sl")


@pytest.mark.parametrize("d_in", ["768x", 12.5, None, 0, True])
def test_a_saelens_config_with_a_bad_size_names_the_key_and_the_value(tmp_path, d_in):
    _saelens_folder(tmp_path / "sl", d_in=d_in)
    with pytest.raises(SAEFileError, match=rf"cfg.json: d_in must be a positive integer, not {re.escape(repr(d_in))}"):
        load_sae(tmp_path / "sl")


def test_a_saelens_config_may_write_its_sizes_as_whole_floats(tmp_path):
    _saelens_folder(tmp_path / "sl", d_in=float(D_IN), d_sae=float(D_SAE))
    sae = load_sae(tmp_path / "sl")
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_IN, D_SAE) and isinstance(sae.cfg.d_in, int)


def test_tsae_folders_keep_their_checksum_and_a_renamed_one_is_explained(tmp_path):
    save_sae(random_sae("topk"), tmp_path / "sae")
    weights = tmp_path / "sae" / "sae.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SAEFileError, match="corrupted SAE weights"):
        load_sae(tmp_path / "sae")
    weights.rename(tmp_path / "sae" / "sae_weights.safetensors")
    with pytest.raises(SAEFileError, match="is a tsae config, but the weights are named sae_weights.safetensors"):
        load_sae(tmp_path / "sae")
