"""CMoE's pure math against hand computations: Act, thresholds, N_s and the copy source on a hand-made Act table,
the probe split, PTL's z-score argmax, the VAE's log-space Gaussian, p_rec and KL (cmoe.md §4.3, §5.2-§5.3)."""

from __future__ import annotations

import math

import pytest
import torch

from dymoe.eval.metrics import cmoe_bwt
from dymoe.methods.cmoe.functional import (
    activation_sums,
    layer_thresholds,
    probe_split,
    select_expansion,
    zscore_argmax,
)
from dymoe.methods.cmoe.vae import (
    TaskVAE,
    diag_gaussian_log_prob,
    kl_standard_normal,
    log_mean_exp,
    train_vae,
)

# three layers: four old experts + one probe, four old + one probe, two old + two probes (probes last)
ACTS = [
    torch.tensor([0.40, 0.30, 0.20, 0.10, 0.25]),
    torch.tensor([0.50, 0.30, 0.10, 0.05, 0.05]),
    torch.tensor([0.30, 0.20, 0.35, 0.15]),
]


def test_thresholds_ns_and_source_on_a_hand_made_act_table():
    # layer 1: mean 0.25, population std sqrt(0.05 / 5) = 0.1 -> 0.25 - 0.08 = 0.17; the probe (0.25) passes
    # layer 2: mean 0.2, std sqrt(0.155 / 5) -> 0.2 - 0.8 * 0.176068 = 0.059146; the probe (0.05) does not
    # layer 3: mean 0.25, std sqrt(0.025 / 4) -> 0.25 - 0.8 * 0.0790569 = 0.186754; probe 0.35 passes, 0.15 not
    P = [1, 1, 2]
    expect_thr = [0.17, 0.2 - 0.8 * math.sqrt(0.155 / 5), 0.25 - 0.8 * math.sqrt(0.025 / 4)]
    for a, p, t in zip(ACTS, P, expect_thr):
        assert float(layer_thresholds([a], p)[0]) == pytest.approx(t, abs=1e-7)
    d = select_expansion(ACTS[:2], 1)
    assert d["n_s"].tolist() == [1, 0] and d["n_new"].tolist() == [1, 0]
    assert d["source"].tolist() == [0, 0]  # argmax Act over old experts and the probe
    d3 = select_expansion(ACTS[2:], 2)
    assert d3["n_s"].tolist() == [1] and d3["source"].tolist() == [2]  # the first probe is the most activated
    assert select_expansion(ACTS[2:], 2, per_layer=4)["n_new"].tolist() == [4]  # Table 4's M
    # copy_source=probe: the most activated passing probe (layer 1: the probe at position 4)
    assert select_expansion(ACTS[:1], 1, copy_source="probe")["source"].tolist() == [4]


def test_global_threshold_over_every_layers_probes():
    # probes 0.25, 0.05, 0.35, 0.15: mean 0.2, std sqrt(0.0125) -> 0.2 - 0.8 * 0.111803 = 0.110557
    thr = layer_thresholds([ACTS[0], ACTS[1]] , 1, scope="global")
    assert float(thr[0]) == pytest.approx(0.15 - 0.8 * 0.1, abs=1e-7)  # two probes 0.25, 0.05: mean .15, std .1
    acts = [ACTS[0], ACTS[1], torch.tensor([0.3, 0.2, 0.35]), torch.tensor([0.3, 0.2, 0.15])]
    d = select_expansion(acts, 1, scope="global")
    assert float(d["threshold"][0]) == pytest.approx(0.2 - 0.8 * math.sqrt(0.0125), abs=1e-7)
    assert d["n_s"].tolist() == [1, 0, 1, 1]


def test_activation_sums_count_top_k_selections_over_real_tokens():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 4.0, 3.0]])
    weights = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.9, 0.1], [0.6, 0.4, 0.0]])
    mask = torch.tensor([True, True, False])  # the third token is padding
    sums, n = activation_sums(scores, weights, mask, "frequency")
    assert sums.tolist() == [1.0, 2.0, 1.0] and float(n) == 2.0
    sums, _ = activation_sums(scores, weights, mask, "logit")
    assert sums.tolist() == [2.0, 4.0, 1.0]
    sums, _ = activation_sums(scores, weights, mask, "probability")
    expect = torch.softmax(scores[:2].double(), -1).sum(0)
    assert torch.allclose(sums, expect)


def test_probe_split_is_seeded_disjoint_and_sized():
    tr, ev = probe_split(1000, 0.1, 0.1, 10_000, seed=3)
    assert len(tr) == 90 and len(ev) == 10 and not set(tr) & set(ev)
    assert (tr, ev) == probe_split(1000, 0.1, 0.1, 10_000, seed=3)
    assert probe_split(1000, 0.1, 0.1, 4, seed=3)[1].__len__() == 4  # the cap
    tr, ev = probe_split(8, 0.1, 0.1, 10, seed=0)  # tiny tasks: one sample each
    assert len(tr) == 1 and len(ev) == 1 and tr != ev


def test_zscore_argmax_by_hand():
    log_p = torch.tensor([[-100.0, -50.0], [-10.0, -60.0]])
    means = torch.tensor([-90.0, -40.0])
    stds = torch.tensor([5.0, 20.0])
    # row 0: (-100+90)/5 = -2, (-50+40)/20 = -0.5 -> task 1 (the raw log p would pick task 1 too)
    # row 1: (-10+90)/5 = 16, (-60+40)/20 = -1 -> task 0
    chosen, z = zscore_argmax(log_p, means, stds)
    assert chosen.tolist() == [1, 0]
    assert z.tolist() == [[-2.0, -0.5], [16.0, -1.0]]
    # the z-score, not the raw likelihood, decides: raw argmax of [-100, -105] is task 0, z-scored it is task 1
    chosen, _ = zscore_argmax(torch.tensor([[-100.0, -105.0]]), torch.tensor([-50.0, -100.0]), torch.tensor([1.0, 10.0]))
    assert chosen.tolist() == [1]


def test_diag_gaussian_and_p_rec_on_a_two_dimensional_example():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    mu = torch.tensor([0.0, 1.0], dtype=torch.float64)
    sigma = torch.tensor([1.0, 2.0], dtype=torch.float64)
    # -1/2 [ (1-0)^2/1 + (2-1)^2/4 + 2 log 1 + 2 log 2 + 2 log 2π ]
    hand = -0.5 * (1.0 + 0.25 + 2 * math.log(2.0) + 2 * math.log(2 * math.pi))
    assert float(diag_gaussian_log_prob(x, mu, sigma)) == pytest.approx(hand, abs=1e-12)
    # p_rec over two decoder samples: log((p1 + p2) / 2), with the second decoder mean at x (only the norm terms)
    hand2 = -0.5 * (2 * math.log(2.0) + 2 * math.log(2 * math.pi))
    lp = torch.stack([diag_gaussian_log_prob(x, mu, sigma), diag_gaussian_log_prob(x, x, sigma)])
    assert float(log_mean_exp(lp)) == pytest.approx(math.log((math.exp(hand) + math.exp(hand2)) / 2), abs=1e-12)
    # no underflow where the raw density is 0 in float64: d = 4096 dimensions 30 sigma away
    far = torch.full((1, 4096), 30.0, dtype=torch.float64)
    lp = diag_gaussian_log_prob(far, torch.zeros_like(far), torch.ones_like(far))
    assert math.exp(float(lp)) == 0.0 and math.isfinite(float(log_mean_exp(lp[None], dim=0)))


def test_kl_against_the_closed_form():
    mu = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    sigma = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    hand = 0.5 * ((0.25 + 4 - 1 - math.log(4)) + (1 + 0.25 - 1 - math.log(0.25)))
    assert float(kl_standard_normal(mu, sigma)) == pytest.approx(hand, abs=1e-12)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0, 1))
    assert float(kl_standard_normal(mu, sigma)) == pytest.approx(float(ref.sum()), abs=1e-12)


def test_task_vae_scores_equal_torch_distributions():
    torch.manual_seed(0)
    vae = TaskVAE(2, hidden=8, latent=3).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    noise = torch.randn(5, 3, dtype=torch.float64)
    vae.requires_grad_(False)
    out = vae(x, noise)
    mu, sigma = vae.encode(x)
    for b in range(4):
        lps = []
        for j in range(5):
            mx, sx = vae.decode(mu[b] + sigma[b] * noise[j])
            lps.append(torch.distributions.Normal(mx, sx).log_prob(x[b]).sum())
        expect = torch.logsumexp(torch.stack(lps), 0) - math.log(5)
        assert float(out["log_p_rec"][b]) == pytest.approx(float(expect), abs=1e-10)
    # score() uses fixed noise shared by the rows: a sample's score does not depend on its batch
    vae = vae.float()
    xs = x.float()
    assert torch.equal(vae.score(xs, 8)[1:3], vae.score(xs[1:3], 8))


def test_train_vae_fits_its_task_better_than_another():
    torch.manual_seed(0)
    a = torch.randn(64, 6) * 0.3 + 2.0
    b = torch.randn(64, 6) * 0.3 - 2.0
    vae = TaskVAE(6, hidden=16, latent=2)
    losses, order = train_vae(vae, a, epochs=30, batch_size=16, lr=1e-2, n_rep=4, kl_weight=1e-3,
                              rec_weight=1e-3, seed=0)
    assert sorted(order) == list(range(64))  # the final epoch's order covers every sample once
    assert losses[-1] < losses[0]
    assert float(vae.score(a, 8).mean()) > float(vae.score(b, 8).mean()) + 10


def test_cmoe_bwt_of_table_1():
    # Table 1, Ours (7B, Norm order): Immediate and Last per task -> BWT -3.58 (average over all N = 8 tasks)
    imm = [79.01, 59.94, 96.85, 56.43, 57.44, 25.63, 65.15, 62.01]
    last = [77.55, 58.17, 94.50, 48.91, 55.45, 23.40, 56.40, 59.44]
    assert round(cmoe_bwt(imm, last), 2) == -3.58
