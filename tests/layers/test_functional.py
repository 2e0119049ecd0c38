"""The fused op against a per-expert loop written here, forward and backward, in every routing mode."""

import math

import pytest
import torch

from dymoe.layers.functional import (
    expand_gates,
    moe_lora_delta,
    moe_lora_delta_reference,
    route,
    router_scores,
)


def naive_gates(scores, top_k, temperature):
    """Per-token loop: sort, keep K, softmax over the kept ones in float64."""
    n, e = scores.shape
    out = torch.zeros(n, e, dtype=torch.float64)
    for t in range(n):
        row = scores[t].double()
        k = min(top_k, e)
        order = sorted(range(e), key=lambda i: -row[i].item())[:k]
        z = [math.exp(row[i].item() / temperature) for i in order if math.isfinite(row[i].item())]
        denom = sum(z)
        for i in order:
            if math.isfinite(row[i].item()):
                out[t, i] = math.exp(row[i].item() / temperature) / denom
    return out


@pytest.mark.parametrize("top_k,temperature", [(4, 1.0), (2, 0.5), (1, 1.0), (8, 0.1)])
def test_route_matches_naive_topk_softmax(top_k, temperature):
    scores = torch.randn(7, 4 if top_k == 4 else 6)
    got = route(scores, top_k, temperature)
    torch.testing.assert_close(got.double(), naive_gates(scores, top_k, temperature), atol=1e-6, rtol=1e-5)


def test_route_masked_and_fully_masked_tokens():
    scores = torch.tensor([[1.0, 2.0, 3.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    scores[0, 2] = float("-inf")
    scores[1, :] = float("-inf")
    w = route(scores, top_k=2, temperature=1.0)
    # token 0: the kept experts are 1 and 0 (3.0 is masked): softmax([2, 1])
    e = math.exp(1.0)
    torch.testing.assert_close(w[0], torch.tensor([1 / (1 + e), e / (1 + e), 0.0, 0.0]))
    assert torch.equal(w[1], torch.zeros(4))  # routed nowhere, not NaN
    ones = route(scores, top_k=2, temperature=1.0, dense_ones=True)
    assert ones.tolist() == [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]


def test_router_scores_modes():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert router_scores(x, u, "linear").tolist() == [[3.0, 8.0], [1.0, 0.0]]
    cos = router_scores(x, u, "cosine", cos_scale=2.0)
    torch.testing.assert_close(cos, torch.tensor([[2 * 0.6, 2 * 0.8], [2.0, 0.0]]))
    # kappa <= 0 falls back to the dot product (upstream behaviour)
    assert router_scores(x, u, "cosine", cos_scale=0.0).tolist() == [[3.0, 8.0], [1.0, 0.0]]
    assert router_scores(x, u, "none").abs().sum() == 0


def test_expand_gates_uniform_and_variable_ranks():
    w = torch.tensor([[0.2, 0.8]])
    torch.testing.assert_close(expand_gates(w, 2, 4), torch.tensor([[0.2, 0.2, 0.8, 0.8]]))
    torch.testing.assert_close(expand_gates(w, torch.tensor([1, 3]), 4), torch.tensor([[0.2, 0.8, 0.8, 0.8]]))


def _bank(n_exp, ranks, d_in=12, d_out=10, dtype=torch.float64):
    a_list = [torch.randn(r, d_in, dtype=dtype, requires_grad=True) for r in ranks]
    b_list = [torch.randn(d_out, r, dtype=dtype, requires_grad=True) for r in ranks]
    return a_list, b_list


@pytest.mark.parametrize(
    "mode,top_k,ranks",
    [
        ("dense-linear", 99, [3, 3, 3, 3]),
        ("topk-linear", 2, [3, 3, 3, 3]),
        ("dense-cosine", 99, [2, 2, 2, 2, 2]),
        ("topk-cosine", 3, [2, 2, 2, 2, 2]),
        ("none", 99, [4, 4]),
        ("topk-linear-variable-rank", 2, [1, 4, 2]),
    ],
)
def test_fused_forward_backward_equals_loop(mode, top_k, ranks):
    n_exp = len(ranks)
    x = torch.randn(9, 12, dtype=torch.float64, requires_grad=True)
    u = torch.randn(n_exp, 12, dtype=torch.float64, requires_grad=True)
    a_list, b_list = _bank(n_exp, ranks)
    router = "none" if mode == "none" else mode.split("-")[1]
    temp = 0.3

    def gates():
        s = router_scores(x, u, router, cos_scale=1.5)
        return route(s, top_k, temp, dense_ones=router == "none").to(x.dtype)

    # fused
    a_cat = torch.cat(a_list)
    b_cat = torch.cat(b_list, dim=1)
    r_arg = ranks[0] if len(set(ranks)) == 1 else torch.tensor(ranks)
    fused = moe_lora_delta(x, a_cat, b_cat, gates(), r_arg, scaling=2.0)
    g_out = torch.randn_like(fused)
    grads_fused = torch.autograd.grad((fused * g_out).sum(), [x, u, *a_list, *b_list], allow_unused=True)
    # loop oracle
    ref = moe_lora_delta_reference(x, a_list, b_list, gates(), scaling=2.0)
    grads_ref = torch.autograd.grad((ref * g_out).sum(), [x, u, *a_list, *b_list], allow_unused=True)
    torch.testing.assert_close(fused, ref, atol=1e-10, rtol=1e-10)
    for gf, gr in zip(grads_fused, grads_ref):
        if gr is None:
            assert gf is None or gf.abs().sum() == 0
        else:
            torch.testing.assert_close(gf, gr, atol=1e-10, rtol=1e-10)


def test_fused_is_not_the_cross_term_form():
    """Σ g_i B_i A_i x differs from (Σ g B)(Σ g A) x: guard against the Prism mistake (coin-protocol §8.3)."""
    x = torch.randn(3, 6, dtype=torch.float64)
    a_list, b_list = _bank(2, [2, 2], d_in=6, d_out=5)
    g = torch.tensor([[0.3, 0.7]] * 3, dtype=torch.float64)
    fused = moe_lora_delta(x, torch.cat(a_list), torch.cat(b_list, 1), g, 2, 1.0)
    wrong = ((x @ (0.3 * a_list[0] + 0.7 * a_list[1]).T) @ (0.3 * b_list[0] + 0.7 * b_list[1]).T).detach()
    expected = (0.3 * (x @ a_list[0].T @ b_list[0].T) + 0.7 * (x @ a_list[1].T @ b_list[1].T)).detach()
    torch.testing.assert_close(fused.detach(), expected)
    assert (fused.detach() - wrong).abs().max() > 1e-3


def test_router_scores_stay_fp32_under_autocast():
    x = torch.randn(5, 8)
    u = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = router_scores(x, u, "linear")
        c = router_scores(x, u, "cosine")
    assert s.dtype == torch.float32 and c.dtype == torch.float32
    torch.testing.assert_close(s, x @ u.T)
