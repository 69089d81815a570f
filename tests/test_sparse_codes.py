"""The sparse training path of the TopK family equals the dense one: outputs, losses and gradients.

The equality tests run on the CPU; `TSAE_TEST_DEVICE=cuda` runs them on a GPU instead (the GPU check
in the README), where the CSR product and the embedding bag take CUDA's kernels."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from tsae_core.losses import AUX_BLOCK_RATIO
from tsae_core.sae import LossContext, SAEConfig
from tsae_core.sparse_codes import MIN_SPARSE_LATENTS, SparseCodes, decode, regular_offsets, use_sparse_path
from tsae_core.variants.registry import build_sae

D, F, K = 24, 96, 4
DEVICE = torch.device(os.environ.get("TSAE_TEST_DEVICE", "cpu"))


def _pair(activation: str, architecture: str = "standard", options: dict | None = None, dtype=torch.float64, aux_k: int = 8):
    cfg = SAEConfig(architecture=architecture, activation=activation, d_in=D, d_sae=F, k=K, aux_k_coefficient=1 / 32, aux_k=aux_k,
                    activation_scaling_factor=0.7, options=options or {})
    dense = build_sae(cfg).to(DEVICE, dtype)
    dense.reset_parameters(torch.Generator().manual_seed(1), b_dec=0.1 * torch.randn(D, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        dense.b_enc.copy_(0.05 * torch.randn(F, generator=torch.Generator().manual_seed(3)))
    sparse = copy.deepcopy(dense)
    sparse.sparse_path = True
    return dense.train(), sparse.train()


def _batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 10, D, generator=g, dtype=dtype)
    x[1, 2] *= 6.0  # one outsized token, as a BOS would be
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[:, 0] = False  # special tokens at the start, and an uneven share of them
    mask[2, 5:7] = False
    doc_start = torch.zeros(3, 10, dtype=torch.bool)
    doc_start[:, 0] = True
    doc_start[1, 6] = True
    return x.to(DEVICE), mask.to(DEVICE), doc_start.to(DEVICE)


def _step(sae, x, mask, doc_start):
    dead = torch.zeros(F, dtype=torch.bool, device=DEVICE)
    dead[: F // 3] = True  # AuxK at work on a third of the latents
    out = sae(x, mask, doc_start)
    terms = sae.loss_terms(out, LossContext(mask, doc_start, 1.0, dead, step=0, seed=0))
    sae.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    return out, terms, {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
@pytest.mark.parametrize("architecture,options,aux_k", [("standard", {}, 8), ("standard", {}, 1),
                                                        ("consistency", {"gradient": "codes"}, 8), ("pooled", {}, 8)])
def test_sparse_path_equals_dense(activation, architecture, options, aux_k):
    """Forward output, every loss term (AuxK included, decoded as a block over 32 dead latents at
    k_aux 8, sparsely at k_aux 1) and every parameter's gradient agree, for the base SAE, a variant
    with a loss on the codes, and one whose encoder reads earlier tokens."""
    n_dead = F // 3
    assert (n_dead <= AUX_BLOCK_RATIO * aux_k) == (aux_k == 8)  # both AuxK decoders are exercised
    dense, sparse = _pair(activation, architecture, options, aux_k=aux_k)
    x, mask, doc_start = _batch()
    out_d, terms_d, grads_d = _step(dense, x, mask, doc_start)
    out_s, terms_s, grads_s = _step(sparse, x, mask, doc_start)
    assert out_s.codes is not None and out_d.codes is None
    if architecture == "standard":  # nothing in the base step reads the dense codes, so they were never made
        assert out_s._features is None
    torch.testing.assert_close(out_s.features, out_d.features, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_s.recon, out_d.recon, rtol=1e-10, atol=1e-12)
    assert terms_s.keys() == terms_d.keys() and "aux_k" in terms_s
    for name in terms_d:
        torch.testing.assert_close(terms_s[name], terms_d[name], rtol=1e-10, atol=1e-12)
    assert grads_s.keys() == grads_d.keys() and {"W_enc", "W_dec", "b_enc", "b_dec"} <= grads_d.keys()
    for name, g in grads_d.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_s[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_sparse_path_float32_and_batchtopk_threshold():
    """In float32 the paths agree to float tolerance, and BatchTopK's running threshold moves the same."""
    dense, sparse = _pair("batchtopk", dtype=torch.float32)
    x, mask, doc_start = _batch(torch.float32)
    for _ in range(2):
        _, terms_d, grads_d = _step(dense, x, mask, doc_start)
        _, terms_s, grads_s = _step(sparse, x, mask, doc_start)
    for name, g in grads_d.items():
        torch.testing.assert_close(grads_s[name], g, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(sparse.activation.threshold, dense.activation.threshold)
    assert float(dense.activation.threshold[0]) > 0


def test_batchtopk_sparse_keeps_masked_tokens_out():
    """Excluded tokens hold no code on the sparse path either, and the batch keeps k per counted token."""
    _, sparse = _pair("batchtopk")
    x, mask, doc_start = _batch()
    out = sparse(x, mask, doc_start)
    assert out.features[~mask].abs().max() == 0
    assert out.codes.values.numel() == K * int(mask.sum())
    assert (out.codes.offsets.diff() >= 0).all() and int(out.codes.offsets[-1]) == out.codes.values.numel()


def test_sparse_decode_is_a_sum_of_decoder_rows():
    W = torch.randn(F, D, dtype=torch.float64, device=DEVICE)
    cols = torch.tensor([3, 7, 7, 50, 0, 95], dtype=torch.long, device=DEVICE)
    values = torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0, 0.25], dtype=torch.float64, device=DEVICE)
    codes = SparseCodes(values, cols, regular_offsets(3, 2, DEVICE), F)
    expected = torch.stack([W[3] + 2 * W[7], -W[7] + 0.5 * W[50], 3 * W[0] + 0.25 * W[95]])
    torch.testing.assert_close(decode(codes, W), expected)
    torch.testing.assert_close(codes.dense() @ W, expected)


def test_sparse_path_is_training_only():
    """Evaluation (eval mode) takes the dense path: BatchTopK's inference threshold is not a batch selection."""
    _, sparse = _pair("topk")
    x, mask, doc_start = _batch()
    assert sparse.eval()(x, mask, doc_start).codes is None
    assert sparse.train()(x, mask, doc_start).codes is not None


def test_a_2d_input_keeps_the_sparse_codes_of_its_tokens():
    """(N, D) input: the output drops the batch axis of its tensors but keeps the kept codes and picks."""
    _, sparse = _pair("topk")
    x = _batch()[0][0]  # (T, D)
    out = sparse.train()(x)
    assert out.features.shape == (x.shape[0], F) and out.codes is not None and out.pick is not None
    assert torch.equal(out.codes.dense().view(x.shape[0], F), out.features)


@pytest.mark.parametrize("setting,activation,d_sae,device,expected", [
    ("auto", "topk", MIN_SPARSE_LATENTS, "cpu", True),
    ("auto", "batchtopk", 16384, "cpu", True),
    ("auto", "topk", MIN_SPARSE_LATENTS // 2, "cpu", False),
    ("auto", "topk", 16384, "cuda", False),
    ("auto", "relu", 16384, "cpu", False),
    ("always", "topk", 512, "cpu", True),
    ("always", "jumprelu", 16384, "cpu", False),
    ("never", "topk", 16384, "cpu", False),
])
def test_use_sparse_path(setting, activation, d_sae, device, expected):
    assert use_sparse_path(setting, activation, d_sae, torch.device(device)) is expected


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_training_statistics_from_the_kept_codes_equal_the_dense_ones(activation):
    """The trainer's firing latents and active-code count (dead-latent tracker, L0) read from the sparse
    codes equal those read from the dense (N, F) codes, special tokens excluded."""
    from tsae_core.train import firing

    dense, sparse = _pair(activation)
    x, mask, doc_start = _batch()
    with torch.no_grad():
        fired_d, active_d = firing(dense(x, mask, doc_start), mask)
        out_s = sparse(x, mask, doc_start)
        fired_s, active_s = firing(out_s, mask)
    assert out_s.codes is not None
    assert torch.equal(fired_s, fired_d) and fired_d.any() and not fired_d.all()
    assert int(active_s) == int(active_d) == int((out_s.features[mask] > 0).sum())


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_sparse_path_under_bf16_autocast(activation):
    """What the GPU path does (bf16 autocast, float32 weights), here with CPU autocast: the sparse
    step runs, its gradients come back in float32 and stay close to the dense step's."""
    dense, sparse = _pair(activation, dtype=torch.float32)
    x, mask, doc_start = _batch(torch.float32)
    grads = {}
    for sae in (dense, sparse):
        dead = torch.zeros(F, dtype=torch.bool, device=DEVICE)
        dead[: F // 3] = True
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            out = sae(x, mask, doc_start)
            terms = sae.loss_terms(out, LossContext(mask, doc_start, 1.0, dead, step=0, seed=0))
        sae.zero_grad(set_to_none=True)
        sum(t.float() for t in terms.values()).backward()
        grads[sae is sparse] = {n: p.grad for n, p in sae.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        assert grads[True][name].dtype == torch.float32, name
        torch.testing.assert_close(grads[True][name], g, rtol=0.1, atol=0.05 * float(g.abs().max()), msg=name)


def test_a_loss_that_reads_every_latent_keeps_training_on_the_dense_path():
    """The straight-through consistency term needs the pre-activations of latents the TopK left out,
    which the sparse path never computes with a gradient: training takes the dense path for it."""
    from tsae_core.train import sparse_path_for

    def sae(options):
        return build_sae(SAEConfig(architecture="consistency", activation="topk", d_in=D, d_sae=MIN_SPARSE_LATENTS, k=K, options=options))

    cpu = torch.device("cpu")
    assert not sparse_path_for(sae({}), "auto", cpu) and not sparse_path_for(sae({}), "always", cpu)
    assert sparse_path_for(sae({"gradient": "codes"}), "auto", cpu)
    assert sparse_path_for(sae({"coefficient": 0.0}), "auto", cpu)
