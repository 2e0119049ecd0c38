"""DyMoE's pure functions against hand computations on small tensors (dymoe.md §4–§7, §11, §12.3)."""

import math

import pytest
import torch

from dymoe.methods.dymoe.functional import (
    analysis_mask,
    group_maxima,
    least_activated,
    load_balance_loss,
    relative_difference,
    rsr_losses,
    rsr_ramp,
    tag_decision,
    tag_mask,
)

INF = float("inf")
NEW = torch.tensor([False, False, True, True])  # experts 0, 1 old; 2, 3 new

# one row per token type; values are exact in binary so D_rel is exact
SCORES = torch.tensor(
    [
        [0.75, 0.125, 0.25, 0.375],  # c_old .75, c_new .375: D = .5 > τ, old wins      -> old
        [0.125, 0.25, 0.75, 0.5],  # c_old .25, c_new .75: D = 2/3, new wins           -> new
        [0.5, 0.0, 0.4375, 0.125],  # c_old .5, c_new .4375: D = .125 <= τ             -> ambiguous
        [1.0, -0.5, 0.75, 0.0],  # c_old 1, c_new .75: D = .25 (= τ in the boundary test)
        [0.0, -0.5, 0.0, -0.25],  # both maxima 0: D = 0                                -> ambiguous
        [-0.5, -0.75, -0.25, -1.0],  # negative: c_old -.5, c_new -.25: D = .25/.5 = .5  -> new
    ]
)


def test_group_maxima_and_relative_difference():
    c_old, c_new = group_maxima(SCORES, NEW)
    assert c_old.tolist() == [0.75, 0.25, 0.5, 1.0, 0.0, -0.5]
    assert c_new.tolist() == [0.375, 0.75, 0.4375, 0.75, 0.0, -0.25]
    d = relative_difference(c_old, c_new)
    expected = [0.375 / 0.75, 0.5 / 0.75, 0.0625 / 0.5, 0.25, 0.0, 0.25 / 0.5]
    torch.testing.assert_close(d, torch.tensor(expected))


def test_tag_decision_types_tokens():
    use_new, ambiguous, d_rel = tag_decision(SCORES, NEW, tau=0.2)
    assert use_new.tolist() == [False, True, False, False, False, True]
    assert ambiguous.tolist() == [False, False, True, False, True, False]
    assert d_rel[4].item() == 0.0  # both zero: the upstream form, no NaN


def test_tag_boundary_is_ambiguous():
    # row 3 has D_rel exactly 0.25: with τ = 0.25 it is ambiguous, just below it is an old token
    _, amb, _ = tag_decision(SCORES, NEW, tau=0.25)
    assert amb[3].item() is True
    use_new, amb, _ = tag_decision(SCORES, NEW, tau=0.2499)
    assert amb[3].item() is False and use_new[3].item() is False
    # new-dominant by value but inside the band: ambiguous, not new
    flipped = torch.tensor([[0.75, 0.0, 1.0, 0.5]])
    use_new, amb, _ = tag_decision(flipped, NEW, tau=0.25)
    assert amb.tolist() == [True] and use_new.tolist() == [False]
    use_new, amb, _ = tag_decision(flipped, NEW, tau=0.2)
    assert use_new.tolist() == [True]


def test_tag_mask_two_sided_leaves_exactly_one_group():
    out = tag_mask(SCORES, NEW, tau=0.2, two_sided=True)
    finite = torch.isfinite(out)
    old_ok, new_ok = finite[:, ~NEW], finite[:, NEW]
    # every row: one group fully finite, the other fully -inf
    assert (old_ok.all(1) ^ new_ok.all(1)).all()
    assert (old_ok.any(1) ^ new_ok.any(1)).all()
    assert new_ok.all(1).tolist() == [False, True, False, False, False, True]
    # unmasked entries are untouched
    assert torch.equal(out[finite], SCORES[finite])
    assert (out[~finite] == -INF).all()


def test_tag_mask_one_sided_only_masks_the_new_group():
    out = tag_mask(SCORES, NEW, tau=0.2, two_sided=False)
    assert torch.isfinite(out[:, ~NEW]).all()  # old experts always reachable
    new_finite = torch.isfinite(out[:, NEW])
    assert new_finite.all(1).tolist() == [False, True, False, False, False, True]
    assert (new_finite.all(1) | ~new_finite.any(1)).all()


@pytest.mark.parametrize(
    "mode,new_allowed",
    [
        # token types of SCORES at τ = .2: old, new, amb, old, amb, new
        ("none", [True] * 6),
        ("only_new", [False, True, False, False, False, True]),
        ("mask_old", [False, True, True, False, True, True]),
        ("only_ambiguous", [False, False, True, False, True, False]),
        ("tag", [False, True, False, False, False, True]),
    ],
)
def test_analysis_masks(mode, new_allowed):
    out = analysis_mask(SCORES, NEW, 0.2, mode)
    assert torch.isfinite(out[:, NEW]).all(1).tolist() == new_allowed
    if mode != "tag":  # the analysis conditions only ever mask the new group
        assert torch.isfinite(out[:, ~NEW]).all()
    else:
        assert torch.equal(torch.isfinite(out), torch.isfinite(tag_mask(SCORES, NEW, 0.2)))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="both an old and a new"):
        tag_decision(SCORES, torch.ones(4, dtype=torch.bool), 0.2)
    with pytest.raises(ValueError, match="token mask mode"):
        analysis_mask(SCORES, NEW, 0.2, "only_old")
    with pytest.raises(ValueError, match="aux loss type"):
        load_balance_loss(SCORES, NEW, None, 2, 1.0, "gshard")


# ---------------------------------------------------------------------------- RSR (§5)
def _softmax(vals, t):
    ex = [math.exp(v / t) for v in vals]
    return [e / sum(ex) for e in ex]


def _rsr_by_hand(rows, new, k, t):
    """Per-token (exc, spe) with plain Python floats."""
    out = []
    for row in rows:
        top = sorted(range(len(row)), key=lambda i: -row[i])[:k]
        sm = _softmax([row[i] for i in top], t)
        w = [0.0] * len(row)
        for i, v in zip(top, sm):
            w[i] = v
        g_new = sum(w[i] for i in range(len(row)) if new[i])
        g_old = sum(w[i] for i in range(len(row)) if not new[i])
        y = min(max(1 - max(w[i] for i in range(len(row)) if not new[i]), 0.0), 1.0)
        spe = -(y * math.log(max(g_new, 1e-8)) + (1 - y) * math.log(max(1 - g_new, 1e-8)))
        out.append((g_old * g_new, spe))
    return out


RSR_ROWS = [[0.2, 0.6, -0.4, 0.1], [0.5, -0.1, 0.3, 0.45], [0.9, 0.8, -0.2, 0.0]]
RSR_NEW = [False, True, True, False]  # experts 1, 2 new


@pytest.mark.parametrize("k,t", [(2, 0.5), (3, 0.1), (4, 1.0)])
def test_rsr_losses_match_hand_computation(k, t):
    scores = torch.tensor(RSR_ROWS)
    per_tok = _rsr_by_hand(RSR_ROWS, RSR_NEW, k, t)
    l_exc, l_spe = rsr_losses(scores, torch.tensor(RSR_NEW), None, k, t)
    assert l_exc.item() == pytest.approx(sum(e for e, _ in per_tok) / 3, rel=1e-5)
    assert l_spe.item() == pytest.approx(sum(s for _, s in per_tok) / 3, rel=1e-5)


def test_rsr_first_token_by_formula():
    # top-2 of [.2, .6, -.4, .1] = {1 (new), 0 (old)}; at T = .5: w1 = e^1.2 / (e^1.2 + e^0.4)
    w1 = math.exp(1.2) / (math.exp(1.2) + math.exp(0.4))
    w0 = 1 - w1
    exc = w0 * w1
    y = 1 - w0  # = w1
    spe = -(y * math.log(w1) + (1 - y) * math.log(w0))
    l_exc, l_spe = rsr_losses(torch.tensor(RSR_ROWS[:1]), torch.tensor(RSR_NEW), None, 2, 0.5)
    assert l_exc.item() == pytest.approx(exc, rel=1e-6)
    assert l_spe.item() == pytest.approx(spe, rel=1e-6)


def test_rsr_masked_mean_and_clamps():
    scores = torch.tensor(RSR_ROWS)
    per_tok = _rsr_by_hand(RSR_ROWS, RSR_NEW, 2, 0.5)
    mask = torch.tensor([True, False, True])
    l_exc, l_spe = rsr_losses(scores, torch.tensor(RSR_NEW), mask, 2, 0.5)
    assert l_exc.item() == pytest.approx((per_tok[0][0] + per_tok[2][0]) / 2, rel=1e-5)
    assert l_spe.item() == pytest.approx((per_tok[0][1] + per_tok[2][1]) / 2, rel=1e-5)
    # no token selected: denominator max(0, 1) -> 0, not NaN
    l_exc, l_spe = rsr_losses(scores, torch.tensor(RSR_NEW), torch.zeros(3, dtype=torch.bool), 2, 0.5)
    assert l_exc.item() == 0.0 and l_spe.item() == 0.0
    # top-1: g_new is exactly 0 or 1, the 1e-8 clamps keep the loss finite (here exactly 0: y matches g_new)
    l_exc, l_spe = rsr_losses(torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.1, 0.9, 0.0, 0.0]]), torch.tensor(RSR_NEW), None, 1, 0.1)
    assert l_exc.item() == 0.0 and l_spe.item() == 0.0


def test_rsr_target_is_detached():
    # with y detached, dL_spe/dg_new = -(y/g_new - (1-y)/(1-g_new)); check through a 2-expert case by hand
    s = torch.tensor([[0.3, 0.1]], requires_grad=True)  # expert 0 old, 1 new; K = 2, T = 1
    _, l_spe = rsr_losses(s, torch.tensor([False, True]), None, 2, 1.0)
    l_spe.backward()
    g = 1 / (1 + math.exp(0.2))  # g_new = softmax weight of expert 1
    y = 1 - (1 - g)  # = g (detached)
    dl_dg = -(y / g - (1 - y) / (1 - g))  # = 0 at y = g
    dg_ds1 = g * (1 - g)
    assert s.grad[0, 1].item() == pytest.approx(dl_dg * dg_ds1, abs=1e-7)
    # if y were not detached, d/dg of -(g log g + (1-g) log(1-g)) = log((1-g)/g) != 0
    assert abs(math.log((1 - g) / g) * dg_ds1) > 1e-2


# ---------------------------------------------------------------------------- load balancing (§6)
AUX_SCORES = torch.tensor([[9.0, 1.0, 0.0], [9.0, 0.0, 2.0], [9.0, 0.5, 0.0]])  # expert 0 old; 1, 2 new
AUX_NEW = torch.tensor([False, True, True])


def _p_new(row):
    return _softmax(row[1:], 1.0)


def test_switch_loss_by_hand():
    p = [_p_new(r) for r in AUX_SCORES.tolist()]
    big_p = [sum(pi[j] for pi in p) / 3 for j in range(2)]
    # top-1 of the new group: tokens 0 and 2 pick expert 1, token 1 picks expert 2 -> f = [2/3, 1/3]
    expected = 2 * (2 / 3 * big_p[0] + 1 / 3 * big_p[1])
    got = load_balance_loss(AUX_SCORES, AUX_NEW, None, 1, 1.0, "switch")
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the old expert's huge score does not matter: only the new group is balanced
    other = AUX_SCORES.clone()
    other[:, 0] = -5.0
    assert load_balance_loss(other, AUX_NEW, None, 1, 1.0, "switch").item() == pytest.approx(expected, rel=1e-6)


def test_switch_loss_masked_tokens():
    mask = torch.tensor([True, True, False])
    p = [_p_new(r) for r in AUX_SCORES.tolist()[:2]]
    big_p = [sum(pi[j] for pi in p) / 2 for j in range(2)]
    expected = 2 * (0.5 * big_p[0] + 0.5 * big_p[1])  # f = [1/2, 1/2]
    got = load_balance_loss(AUX_SCORES, AUX_NEW, mask, 1, 1.0, "switch")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_switch_loss_is_constant_when_k_covers_the_new_group():
    s = AUX_SCORES.clone().requires_grad_(True)
    loss = load_balance_loss(s, AUX_NEW, None, 16, 0.01, "switch")  # k_new = min(16, 2) = 2 = E_new
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    assert s.grad.abs().max().item() < 1e-5


def test_cv2_loss_by_hand():
    p = [_p_new(r) for r in AUX_SCORES.tolist()]
    a, b = (sum(pi[j] for pi in p) / 3 for j in range(2))
    mean = (a + b) / 2
    var = ((a - mean) ** 2 + (b - mean) ** 2) / (2 - 1)  # unbiased
    got = load_balance_loss(AUX_SCORES, AUX_NEW, None, 1, 1.0, "cv2")
    assert got.item() == pytest.approx(var / mean**2, rel=1e-5)
    assert load_balance_loss(AUX_SCORES, AUX_NEW, None, 1, 1.0, "none").item() == 0.0


# ---------------------------------------------------------------------------- the live readings of L_aux
# experts 0, 1 old; 2, 3 new; top-2 over all four: token 0 -> {0, 2}, token 1 -> {2, 3}, token 2 -> {3, 0}
LIVE_SCORES = torch.tensor([[2.0, 0.0, 1.0, 0.5], [0.0, 1.5, 2.5, 2.0], [1.2, 1.0, 0.0, 3.0]])
LIVE_F = [2 / 6, 0.0, 2 / 6, 2 / 6]  # (token, slot) assignments per expert over 3 tokens x 2 slots


def _live_p(t=1.0):
    """Per-token softmax over all four experts and its token mean P, by hand."""
    p = [_softmax(r, t) for r in LIVE_SCORES.tolist()]
    return p, [sum(pi[j] for pi in p) / 3 for j in range(4)]


def test_switch_all_value_and_gradient_on_the_new_group_by_hand():
    """The layer's Switch loss E·Σ f·P with top-K over all experts: live on the new group while K = E_new."""
    p, big_p = _live_p()
    expected = 4 * sum(f * q for f, q in zip(LIVE_F, big_p))
    s = LIVE_SCORES.clone().requires_grad_(True)
    loss = load_balance_loss(s, NEW, None, 2, 1.0, "switch_all")
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # dL/ds_nj = E/N · p_nj (f_j − Σ_i f_i p_ni) / T  (f has no gradient)
    for n in range(3):
        mean_f = sum(f * q for f, q in zip(LIVE_F, p[n]))
        for j in range(4):
            assert s.grad[n, j].item() == pytest.approx(4 / 3 * p[n][j] * (LIVE_F[j] - mean_f), rel=1e-5, abs=1e-7)
    assert s.grad[:, 2:].abs().min() > 1e-3  # every new-expert score of every token gets a gradient
    # the same case under the old local reading (top-2 of the two new experts) is the constant 1
    t = LIVE_SCORES.clone().requires_grad_(True)
    local = load_balance_loss(t, NEW, None, 2, 1.0, "switch_local")
    local.backward()
    assert local.item() == pytest.approx(1.0) and t.grad.abs().max() < 1e-6


def test_live_aux_gives_the_new_router_rows_a_gradient():
    """Through a router: scores = x·Uᵀ with the old rows frozen; the new rows' gradient is the hand formula's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    u_old = torch.randn(2, 3, generator=g, dtype=torch.float64)
    u_new = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scores = x @ torch.cat([u_old, u_new]).T  # [5, 4]
    loss = load_balance_loss(scores, 2, None, 2, 0.5, "switch_all")
    loss.backward()
    # by hand: dL/du_j = Σ_n dL/ds_nj · x_n with dL/ds_nj = E/N · p_nj (f_j − Σ_i f_i p_ni) / T
    sc = scores.detach().tolist()
    top = [sorted(range(4), key=lambda j: -r[j])[:2] for r in sc]
    f = [sum(j in t for t in top) / (5 * 2) for j in range(4)]
    p = [_softmax(r, 0.5) for r in sc]
    grad = [[0.0] * 3 for _ in range(2)]
    for n in range(5):
        mean_f = sum(fi * pi for fi, pi in zip(f, p[n]))
        for j in (2, 3):
            ds = 4 / 5 * p[n][j] * (f[j] - mean_f) / 0.5
            for d in range(3):
                grad[j - 2][d] += ds * x[n, d].item()
    # (the loss is computed in fp32)
    assert u_new.grad.flatten().tolist() == pytest.approx(grad[0] + grad[1], rel=1e-5, abs=1e-8)
    assert u_new.grad.abs().sum() > 1e-3


def test_switch_new_and_group_by_hand():
    _, big_p = _live_p()
    got = load_balance_loss(LIVE_SCORES, NEW, None, 2, 1.0, "switch_new")
    assert got.item() == pytest.approx(4 * (LIVE_F[2] * big_p[2] + LIVE_F[3] * big_p[3]), rel=1e-6)
    # groups old {0, 1} and new {2, 3}: f = (1/3, 2/3), P = (P0 + P1, P2 + P3)
    expected = 2 * (1 / 3 * (big_p[0] + big_p[1]) + 2 / 3 * (big_p[2] + big_p[3]))
    s = LIVE_SCORES.clone().requires_grad_(True)
    loss = load_balance_loss(s, NEW, None, 2, 1.0, "group")
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert s.grad[:, 2:].abs().sum() > 1e-3
    # explicit groups: one per task, e.g. three groups {0}, {1}, {2, 3}
    member = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.bool)
    three = 3 * (LIVE_F[0] * big_p[0] + LIVE_F[1] * big_p[1] + (LIVE_F[2] + LIVE_F[3]) * (big_p[2] + big_p[3]))
    assert load_balance_loss(LIVE_SCORES, NEW, None, 2, 1.0, "group", member).item() == pytest.approx(three, rel=1e-6)


def test_live_readings_are_constant_where_they_must_be():
    s = LIVE_SCORES.clone().requires_grad_(True)
    # top-K covering every expert (the first task at 16 of 16), or a single group: the constant 1, no gradient
    for kind, k, mask, groups in (("switch_all", 4, NEW, None), ("group", 2, torch.ones(4, dtype=torch.bool), None),
                                  ("group", 2, NEW, torch.ones(4, 1, dtype=torch.bool))):
        loss = load_balance_loss(s, mask, None, k, 1.0, kind, groups)
        loss.backward()
        assert loss.item() == pytest.approx(1.0) and s.grad.abs().max() < 1e-7
        s.grad = None
    # uniform routing gives 1 for every Switch form that sums over all experts
    flat = torch.zeros(6, 4)
    assert load_balance_loss(flat, NEW, None, 2, 1.0, "switch_all").item() == pytest.approx(1.0)
    # masked tokens are left out of f and P
    mask = torch.tensor([True, True, False])
    p = [_softmax(r, 1.0) for r in LIVE_SCORES.tolist()[:2]]
    big_p = [(p[0][j] + p[1][j]) / 2 for j in range(4)]
    f = [1 / 4, 0.0, 2 / 4, 1 / 4]
    got = load_balance_loss(LIVE_SCORES, NEW, mask, 2, 1.0, "switch_all")
    assert got.item() == pytest.approx(4 * sum(a * b for a, b in zip(f, big_p)), rel=1e-6)
    # "switch" is the older name of the local form
    assert torch.equal(load_balance_loss(AUX_SCORES, AUX_NEW, None, 1, 1.0, "switch"),
                       load_balance_loss(AUX_SCORES, AUX_NEW, None, 1, 1.0, "switch_local"))


# ---------------------------------------------------------------------------- int form (the hot path)
@pytest.mark.parametrize("two_sided", [True, False])
def test_int_split_equals_the_bool_mask_values_and_gradients(two_sided):
    """``new_mask=k`` (first k experts old: the layer's layout) gives the bool-mask results, gradients included."""
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(37, 7, generator=g)
    k = 4
    mask = torch.arange(7) >= k
    token_mask = torch.rand(37, generator=g) > 0.3
    for fn in (lambda s, m: group_maxima(s, m)[0], lambda s, m: group_maxima(s, m)[1],
               lambda s, m: tag_mask(s, m, 0.2, two_sided),
               lambda s, m: analysis_mask(s, m, 0.2, "only_ambiguous"),
               lambda s, m: rsr_losses(s, m, token_mask, 3, 0.1)[0],
               lambda s, m: rsr_losses(s, m, token_mask, 3, 0.1)[1],
               lambda s, m: load_balance_loss(s, m, token_mask, 2, 0.5, "switch"),
               lambda s, m: load_balance_loss(s, m, token_mask, 2, 0.5, "cv2"),
               lambda s, m: load_balance_loss(s, m, token_mask, 3, 0.5, "switch_all"),
               lambda s, m: load_balance_loss(s, m, token_mask, 3, 0.5, "switch_new"),
               lambda s, m: load_balance_loss(s, m, token_mask, 3, 0.5, "group")):
        outs, grads = [], []
        for m in (mask, k):
            s = raw.clone().requires_grad_(True)
            out = fn(s, m)
            torch.where(torch.isfinite(out), out, torch.zeros_like(out)).sum().backward()
            outs.append(out.detach())
            grads.append(s.grad)
        assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert [t.tolist() for t in tag_decision(raw, k, 0.2)] == [t.tolist() for t in tag_decision(raw, mask, 0.2)]
    # the first task: no old experts; load balancing covers the whole bank, TAG and RSR refuse
    assert load_balance_loss(raw, 0, None, 2, 0.5, "cv2").item() == pytest.approx(
        load_balance_loss(raw, torch.ones(7, dtype=torch.bool), None, 2, 0.5, "cv2").item(), rel=1e-6)
    for bad in (0, 7):
        with pytest.raises(ValueError, match="both an old and a new"):
            tag_mask(raw, bad, 0.2)


# ---------------------------------------------------------------------------- schedule and pruning
@pytest.mark.parametrize(
    "p,start,rho",
    [(0.0, 0.5, 0.0), (0.3, 0.5, 0.0), (0.5, 0.5, 0.0), (0.75, 0.5, 0.5), (1.0, 0.5, 1.0), (0.9, 0.8, 0.5),
     (0.0, 0.0, 1.0), (0.6, 0.0, 1.0)],
)
def test_rsr_ramp(p, start, rho):
    assert rsr_ramp(p, start) == pytest.approx(rho)


def test_least_activated():
    freq = torch.tensor([0.5, 0.1, 0.1, 0.9, 0.0, 0.3, 0.2, 0.8])
    assert least_activated(freq, 1 / 4).tolist() == [1, 4]  # 0.0 and the first of the tied 0.1s
    assert least_activated(freq, 1 / 8).tolist() == [4]
    assert least_activated(freq, 0.0).tolist() == []
    assert least_activated(torch.tensor([0.2, 0.1]), 0.9).tolist() == [1]  # never every expert
