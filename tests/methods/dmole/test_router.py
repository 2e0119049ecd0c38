"""D-MoLE's autoencoder router (dmole.md §7) against hand computations: the autoencoder's loss (Eq. 9), thresholds,
per-sample top-2 gates under threshold (Eqs. 10-12), the code's batch vote, the training gates."""

from __future__ import annotations

import pytest
import torch

from dymoe.methods.dmole.router import (
    TaskAutoencoder,
    batch_vote_gates,
    eval_gates,
    threshold,
    train_autoencoder,
    train_gates,
)

TAUS = torch.tensor([1.0, 1.0, 1.0, 1.0])


def test_autoencoder_loss_is_eq_9():
    torch.manual_seed(0)
    ae = TaskAutoencoder(6, 3)
    z = torch.randn(4, 6)
    h = torch.relu(z @ ae.encoder.weight.T + ae.encoder.bias)
    rec = torch.sigmoid(h @ ae.decoder.weight.T + ae.decoder.bias)
    expect = ((rec - z) ** 2).sum(1) / 6
    assert torch.allclose(ae.loss(z), expect, atol=1e-6)


def test_training_lowers_the_loss_and_both_recipes_run():
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.rand(64, 12), dim=1)
    ae = TaskAutoencoder(12, 4)
    losses = train_autoencoder(ae, feats, epochs=50, lr=1e-2, batch_size=16)
    assert len(losses) == 50 and losses[-1] < 0.5 * losses[0]
    # the code's recipe stops when the epoch-mean loss has not improved for `patience` epochs (here: lr 0)
    code = train_autoencoder(TaskAutoencoder(12, 4), feats, epochs=1000, lr=0.0, eta_min=0.0, recipe="code",
                             patience=3)
    assert 4 <= len(code) < 10 and max(code) - min(code) < 1e-6  # stopped after ~patience flat epochs


def test_thresholds():
    losses = torch.tensor([0.1, 0.4, 0.2, 0.3])
    assert threshold(losses) == pytest.approx(1.2 * 0.4)
    assert threshold(losses, "quantile", 1.0, 0.5) == pytest.approx(0.25)
    assert threshold(losses, "max", 2.0) == pytest.approx(0.8)


def test_eval_gates_top2_under_threshold_and_none():
    losses = torch.tensor([
        [0.2, 0.1, 0.5, 0.3],  # all under: the two lowest, tasks 1 and 0
        [2.0, 0.9, 3.0, 5.0],  # only task 1 under
        [2.0, 2.0, 2.0, 2.0],  # none under: the pretrained model
        [1.0, 0.7, 0.7, 1.5],  # ties, and L = tau counts as under (Eq. 10's <=)
    ])
    gates = eval_gates(losses, TAUS, top_k=2)
    assert gates.tolist() == [
        [True, True, False, False],
        [False, True, False, False],
        [False, False, False, False],
        [False, True, True, False],
    ]
    assert eval_gates(losses, TAUS, top_k=1).sum(1).tolist() == [1, 1, 0, 1]


def test_batch_vote_is_the_codes():
    losses = torch.tensor([
        [0.1, 0.5, 2.0],  # votes 0
        [0.2, 0.3, 2.0],  # votes 0
        [0.9, 0.1, 2.0],  # votes 1
        [3.0, 3.0, 3.0],  # no valid vote
    ])
    taus = torch.ones(3)
    # 3 valid votes: task 0 (2), task 1 (1 = 33 % >= 30 %): both on for every row
    assert batch_vote_gates(losses, taus, 0.3).tolist() == [[True, True, False]] * 4
    assert batch_vote_gates(losses, taus, 0.5).tolist() == [[True, False, False]] * 4
    assert not batch_vote_gates(torch.full((2, 3), 5.0), taus).any()


def test_training_gates_current_plus_the_most_relevant_prior():
    prior = torch.tensor([[0.3, 0.2], [0.9, 0.95], [5.0, 5.0]])  # per sample: task 1, task 0, none under threshold
    gates = train_gates(prior, torch.ones(2), 2)
    assert gates.tolist() == [[False, True, True], [True, False, True], [False, False, True]]
    assert train_gates(torch.zeros(3, 0), torch.zeros(0), 0).tolist() == [[True]] * 3
    vote = train_gates(prior, torch.ones(2), 2, mode="batch_vote", min_support=0.5)  # 1 vote each: tie -> task 0
    assert vote.tolist() == [[True, False, True]] * 3
    assert train_gates(prior, torch.ones(2), 2, mode="batch_vote", min_support=0.6)[:, :2].sum() == 0
