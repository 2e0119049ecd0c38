"""The baselines' math (dymoe.methods.penalties) against hand computations and naive loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from dymoe.methods.penalties import (
    add_squared_grads,
    answer_positions,
    distillation_kl,
    ewc_penalty,
    ewc_penalty_grad,
    lora_l2,
    merge_fisher,
    orthogonality_l1,
)

# ------------------------------------------------------------------------------------------------------- EWC


def _ewc_case():
    params = {"w": torch.tensor([1.0, 2.0], requires_grad=True), "m": torch.tensor([[0.5, -1.0]], requires_grad=True)}
    anchor = {"w": torch.tensor([0.0, 1.0]), "m": torch.tensor([[0.5, 1.0]])}
    fisher = {"w": torch.tensor([2.0, 3.0]), "m": torch.tensor([[7.0, 0.25]])}
    return params, anchor, fisher


def test_ewc_penalty_hand_value():
    params, anchor, fisher = _ewc_case()
    # (λ/2) Σ F Δ² with λ = 4: w: 2·1² + 3·1² = 5; m: 7·0² + 0.25·(-2)² = 1 → 2 · 6 = 12
    assert ewc_penalty(params, fisher, anchor, 4.0).item() == pytest.approx(12.0)


def test_ewc_penalty_zero_at_anchor_and_quadratic():
    _, anchor, fisher = _ewc_case()
    at_anchor = {k: v.clone() for k, v in anchor.items()}
    assert ewc_penalty(at_anchor, fisher, anchor, 5000.0).item() == 0.0
    delta = {"w": torch.tensor([0.3, -0.1]), "m": torch.tensor([[1.0, 0.2]])}
    p1 = ewc_penalty({k: anchor[k] + delta[k] for k in anchor}, fisher, anchor, 3.0)
    p2 = ewc_penalty({k: anchor[k] + 2 * delta[k] for k in anchor}, fisher, anchor, 3.0)
    p3 = ewc_penalty({k: anchor[k] + 3 * delta[k] for k in anchor}, fisher, anchor, 3.0)
    assert p1.item() > 0
    assert p2.item() == pytest.approx(4 * p1.item(), rel=1e-6)
    assert p3.item() == pytest.approx(9 * p1.item(), rel=1e-6)


def test_ewc_autograd_gradient_matches_analytic():
    params, anchor, fisher = _ewc_case()
    lam = 4.0
    ewc_penalty(params, fisher, anchor, lam).backward()
    analytic = ewc_penalty_grad(params, fisher, anchor, lam)
    # by hand: λ F Δ = 4 · [2·1, 3·1] and 4 · [[7·0, 0.25·(-2)]]
    assert torch.equal(analytic["w"], torch.tensor([8.0, 12.0]))
    assert torch.equal(analytic["m"], torch.tensor([[0.0, -2.0]]))
    for k in params:
        torch.testing.assert_close(params[k].grad, analytic[k])


def test_ewc_missing_name_is_an_error_and_empty_is_zero():
    params, anchor, fisher = _ewc_case()
    del fisher["m"]
    with pytest.raises(KeyError):
        ewc_penalty(params, fisher, anchor, 1.0)
    assert ewc_penalty({}, {}, {}, 1.0).item() == 0.0


def test_fisher_is_mean_of_squared_per_sample_grads():
    # model: loss_i = (w·x_i - y_i)²  →  g_i = 2 (w·x_i - y_i) x_i, computed by hand below
    w = torch.tensor([0.5, -1.0], requires_grad=True)
    xs = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
    ys = torch.tensor([1.0, 0.0, 2.0])
    running = {"w": torch.zeros(2)}
    for x, y in zip(xs, ys):
        (g,) = torch.autograd.grad((w @ x - y) ** 2, [w])
        running = add_squared_grads(running, {"w": g})
    fisher = running["w"] / len(xs)
    expected = torch.zeros(2)
    for x, y in zip(xs, ys):
        r = 0.5 * x[0].item() - 1.0 * x[1].item() - y.item()
        expected += torch.tensor([(2 * r * x[0].item()) ** 2, (2 * r * x[1].item()) ** 2])
    torch.testing.assert_close(fisher, expected / 3)
    # an unused tensor (grad None) adds nothing
    assert torch.equal(add_squared_grads({"u": torch.ones(2)}, {"u": None})["u"], torch.ones(2))


def test_merge_fisher_sums_over_tasks():
    f1 = {"a": torch.tensor([1.0, 2.0])}
    total = merge_fisher(None, f1)
    f1["a"].add_(100)  # merge copies: later edits of the task Fisher do not leak in
    assert torch.equal(total["a"], torch.tensor([1.0, 2.0]))
    total = merge_fisher(total, {"a": torch.tensor([0.5, 0.5]), "b": torch.tensor([3.0])})
    assert torch.equal(total["a"], torch.tensor([1.5, 2.5])) and torch.equal(total["b"], torch.tensor([3.0]))
    with pytest.raises(ValueError, match="changed shape"):
        merge_fisher(total, {"a": torch.zeros(3)})


# ------------------------------------------------------------------------------------------------------- LwF


def test_answer_positions_apply_the_causal_shift():
    labels = torch.tensor([[-100, 7, 8, -100], [-100, -100, -100, 9]])
    b, t = answer_positions(labels)
    # logits at t predict labels[t + 1]: sample 0 → positions 0, 1; sample 1 → position 2
    assert b.tolist() == [0, 0, 1] and t.tolist() == [0, 1, 2]


def test_distillation_kl_hand_value():
    labels = torch.tensor([[-100, 5, -100]])  # only position 0 is scored
    student = torch.tensor([[[2 * math.log(3.0), 0.0], [9.0, -9.0], [4.0, 1.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [-9.0, 9.0], [0.0, 7.0]]])
    # T = 2: q = softmax([0, 0]) = (1/2, 1/2), p = softmax([ln 3, 0]) = (3/4, 1/4)
    # KL(q‖p) = ½ ln(½ / ¾) + ½ ln(½ / ¼) = ½ ln(4/3); times T² = 4 → 2 ln(4/3)
    got = distillation_kl(student, teacher, labels, temperature=2.0)
    assert got.item() == pytest.approx(2 * math.log(4 / 3), rel=1e-6)
    # T = 1 on the same logits: p = softmax([2 ln 3, 0]) = (9/10, 1/10): ½ ln(5/9) + ½ ln(5) = ½ ln(25/9)
    assert distillation_kl(student, teacher, labels, 1.0).item() == pytest.approx(0.5 * math.log(25 / 9), rel=1e-6)


def test_distillation_kl_matches_a_naive_loop():
    torch.manual_seed(3)
    b_sz, t_sz, v = 3, 7, 11
    student = torch.randn(b_sz, t_sz, v, requires_grad=True)
    teacher = torch.randn(b_sz, t_sz, v)
    labels = torch.full((b_sz, t_sz), -100)
    labels[0, 3:] = 1
    labels[1, 6] = 2
    labels[2, 2:5] = 3
    temp = 2.0
    total, count = 0.0, 0
    for b in range(b_sz):
        for t in range(t_sz - 1):
            if labels[b, t + 1] == -100:
                continue
            log_p = F.log_softmax(student[b, t].detach() / temp, -1)
            q = F.softmax(teacher[b, t] / temp, -1)
            total += F.kl_div(log_p, q, reduction="sum").item()
            count += 1
    assert count == 4 + 1 + 3
    got = distillation_kl(student, teacher, labels, temp)
    assert got.item() == pytest.approx(temp**2 * total / count, rel=1e-5)
    got.backward()
    assert student.grad[0, :2].abs().sum() == 0 and student.grad[0, 2:6].abs().sum() > 0  # unscored positions: 0


def test_distillation_kl_zero_when_equal_and_without_answers():
    logits = torch.randn(2, 5, 9)
    labels = torch.tensor([[-100, -100, 4, 4, 4], [-100, 1, -100, -100, -100]])
    assert distillation_kl(logits, logits.clone(), labels).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.randn(2, 5, 9, requires_grad=True)
    none = distillation_kl(student, logits, torch.full((2, 5), -100))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError):
        distillation_kl(student, logits, labels, temperature=0.0)


# ---------------------------------------------------------------------------------------------------- O-LoRA


def test_orthogonality_hand_values():
    a_old = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert orthogonality_l1(a_old, torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -5.0]])).item() == 0.0
    # A_old · A_newᵀ = [[1, 4], [-2, 0]] → 1 + 4 + 2 + 0 = 7
    a_new = torch.tensor([[1.0, -2.0, 3.0], [4.0, 0.0, 1.0]], requires_grad=True)
    a_old.requires_grad_(True)
    loss = orthogonality_l1(a_old, a_new)
    assert loss.item() == pytest.approx(7.0)
    loss.backward()
    # d/dA_new Σ|M| = sign(M)ᵀ A_old with M = A_old A_newᵀ = [[1, 4], [-2, 0]]: rows [1, -1, 0] and [1, 0, 0]
    assert torch.equal(a_new.grad, torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert a_old.grad is None  # the old A's are detached


def test_orthogonality_empty_old_and_l2():
    assert orthogonality_l1(torch.zeros(0, 3), torch.randn(2, 3)).item() == 0.0
    # ‖[[3, 4]]‖_F = 5, ‖[[0], [12], [5]]‖_F = 13
    assert lora_l2(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0], [12.0], [5.0]])).item() == pytest.approx(18.0)
