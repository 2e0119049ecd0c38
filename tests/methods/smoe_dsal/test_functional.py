"""SMoE-DSAL's math against hand computations and the naive T × V form (smoe-dsal.md §3–§4). The AT-Router's
Eqs. 5–6, 8, 11 on a hand-computed three-expert example and k = 0 = the base MLP exactly are tested with the layer
(tests/layers/test_moe_ffn.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dymoe.methods.smoe_dsal.functional import (
    ChunkedLogSumExp,
    balance_loss,
    dsal_loss,
    dsal_loss_naive,
    expected_embeddings,
    topk_loss,
    virtual_expert,
)


def _module(d: int, width: int, n: int, g: torch.Generator, dtype=torch.float64) -> dict[str, torch.Tensor]:
    return {"w_gate": torch.randn(n * width, d, generator=g, dtype=dtype),
            "w_up": torch.randn(n * width, d, generator=g, dtype=dtype),
            "w_down": torch.randn(d, n * width, generator=g, dtype=dtype) * 0.3}


def test_virtual_expert_is_eq7_with_averaged_weights():
    g = torch.Generator().manual_seed(0)
    m = _module(5, 3, 4, g)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    gate = sum(m["w_gate"][3 * i : 3 * i + 3] for i in range(4)) / 4  # [3, 5]
    up = sum(m["w_up"][3 * i : 3 * i + 3] for i in range(4)) / 4
    down = sum(m["w_down"][:, 3 * i : 3 * i + 3] for i in range(4)) / 4  # [5, 3]
    want = (F.silu(x @ gate.T) * (x @ up.T)) @ down.T
    torch.testing.assert_close(virtual_expert(x, m["w_gate"], m["w_up"], m["w_down"], 4), want)


def test_chunked_logsumexp_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ChunkedLogSumExp.apply(a, b, 3), (h, w))
    torch.testing.assert_close(ChunkedLogSumExp.apply(h, w, 4), torch.logsumexp(h @ w.T, -1))


def test_efficient_dsal_equals_the_naive_t_by_v_form():
    """Values and gradients (experts, projector, layer input) on a 17-token vocabulary, with padding and
    response tokens outside the prompt mask."""
    g = torch.Generator().manual_seed(2)
    B, T, d, V, dp = 3, 6, 5, 17, 4
    m = {k: v.requires_grad_() for k, v in _module(d, 2, 4, g).items()}
    w_em = torch.randn(V, d, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    h = torch.randn(B, T, d, generator=g, dtype=torch.float64, requires_grad=True)
    pw = torch.randn(dp, d, generator=g, dtype=torch.float64, requires_grad=True)
    pb = torch.randn(dp, generator=g, dtype=torch.float64, requires_grad=True)
    prompt = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    e = torch.zeros(B, T, d, dtype=torch.float64)
    e[prompt] = expected_embeddings(h0[prompt], w_em)[0]
    fast = dsal_loss(h, e, prompt, w_em, m, 4, pw, pb, chunk=2)
    params = [h, pw, pb, *m.values()]
    g_fast = torch.autograd.grad(fast.sum(), params)
    slow = dsal_loss_naive(h, h0, prompt, w_em, m, 4, pw, pb)
    g_slow = torch.autograd.grad(slow.sum(), params)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # a hand check of one sample: row 2 has one pair (0 -> 1)
    p1 = torch.softmax(h0[2, 1] @ w_em.T, -1)
    hb = virtual_expert(h[2, :1], m["w_gate"], m["w_up"], m["w_down"], 4)[0] @ pw.T + pb
    q = torch.log_softmax((w_em @ pw.T + pb) @ hb, -1)
    torch.testing.assert_close(fast[2].detach(), -(p1 * q).sum().detach(), rtol=1e-10, atol=1e-10)


def test_soft_labels_entropy():
    w_em = torch.eye(3)
    e, ent = expected_embeddings(torch.zeros(2, 3), w_em)
    torch.testing.assert_close(e, torch.full((2, 3), 1 / 3))  # uniform labels: the mean embedding
    torch.testing.assert_close(ent, torch.full((2,), math.log(3)))


def test_balance_loss_by_hand():
    # 3 tokens, 2 experts; token 2 is padding
    s = torch.tensor([[1.0, -1.0], [2.0, 0.0], [9.0, 9.0]])
    a = torch.tensor([0.0, 1.0, -9.0])
    w = torch.tensor([[0.7, 0.0], [0.6, 0.0], [0.3, 0.3]])
    mask = torch.tensor([True, True, False])
    # s̄ = [1.5, -0.5], ᾱ = 0.5 → z = [1, -1]; counts [2, 0] → f = [1, 0]: expert 0 over-used, expert 1 under
    want = -(math.log(1 - 1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    torch.testing.assert_close(balance_loss(s, a, w, mask), torch.tensor(want))
    # per_token reading: f = counts / |B| = [1, 0] as well here; with both experts used by every token: f = [1, 1]
    w2 = torch.tensor([[0.4, 0.3], [0.4, 0.3], [0.3, 0.3]])
    want2 = -(math.log(1 - 1 / (1 + math.exp(-1))) + math.log(1 - 1 / (1 + math.exp(1)))) / 2
    torch.testing.assert_close(balance_loss(s, a, w2, mask, "per_token"), torch.tensor(want2))
    # share reading of the same: f = [0.5, 0.5] ≥ 1/2 for both → the same value
    torch.testing.assert_close(balance_loss(s, a, w2, mask, "share"), torch.tensor(want2))
    assert balance_loss(s, a, torch.zeros(3, 2), mask) is None  # no expert fired: skipped


def test_topk_loss_by_hand():
    s = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    a = torch.tensor([0.0, 1.0])
    w = torch.tensor([[0.7, 0.0], [0.6, 0.0]])  # k = 1
    z = 0.5 - 0.5  # mean s̄ = 0.5, ᾱ = 0.5
    torch.testing.assert_close(topk_loss(s, a, w, 2.0), torch.tensor(-math.log(1 / (1 + math.exp(-z)))))
    torch.testing.assert_close(topk_loss(s, a, w, 0.5), torch.tensor(-math.log(1 - 1 / (1 + math.exp(-z)))))
    assert float(topk_loss(s, a, w, 1.0)) == 0.0


@pytest.fixture()
def one_thread():
    """Many tiny ops: one thread (two threads on a shared, loaded CPU are several times slower here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_dsal_identifies_the_domain_a_module_was_trained_on(one_thread):
    """Two modules (virtual expert + projector), each trained with DSAL alone on its own synthetic domain (different
    token statistics), then Eq. 4 on held-out sequences: the argmin is the sequence's domain."""
    torch.manual_seed(0)
    V, d, dp, T = 24, 8, 6, 10
    w_em = torch.randn(V, d) * 2.0

    def sample(domain: int, n: int, gen: torch.Generator) -> torch.Tensor:
        # domain 0: tokens 0..11 counting up; domain 1: tokens 12..23 counting down
        start = torch.randint(0, 12, (n, 1), generator=gen)
        steps = torch.arange(T)[None]
        return (start + steps) % 12 if domain == 0 else 12 + (start - steps) % 12

    def module() -> dict[str, torch.Tensor]:
        return {"w_gate": (torch.randn(4 * 4, d) * 0.3).requires_grad_(), "w_up": (torch.randn(4 * 4, d) * 0.3)
                .requires_grad_(), "w_down": (torch.randn(d, 4 * 4) * 0.3).requires_grad_(),
                "pw": (torch.randn(dp, d) * 0.3).requires_grad_(), "pb": torch.zeros(dp, requires_grad=True)}

    mask = torch.ones(16, T, dtype=torch.bool)  # 40 Adam steps per module suffice
    mods = []
    for dom in (0, 1):
        m = module()
        opt = torch.optim.Adam(list(m.values()), lr=0.1)
        gen = torch.Generator().manual_seed(10 + dom)
        for _ in range(40):
            x = w_em[sample(dom, 16, gen)]  # the "layer input" = the embeddings here
            e, _ = expected_embeddings(x.reshape(-1, d), w_em)
            loss = dsal_loss(x, e.reshape(16, T, d), mask, w_em, m, 4, m["pw"], m["pb"]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        mods.append(m)
    gen = torch.Generator().manual_seed(99)
    for dom in (0, 1):
        x = w_em[sample(dom, 16, gen)]
        e, _ = expected_embeddings(x.reshape(-1, d), w_em)
        with torch.no_grad():
            losses = torch.stack([dsal_loss(x, e.reshape(16, T, d), mask, w_em, m, 4, m["pw"], m["pb"]) for m in mods], 1)
        assert (losses.argmin(1) == dom).all(), losses
