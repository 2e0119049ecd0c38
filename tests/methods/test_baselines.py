"""Two-task smoke runs of the CoIN baselines on a tiny in-memory LLaVA, each checking what defines the method."""

import copy

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from dymoe.errors import ConfigError
from dymoe.injection import AdapterConfig, inject
from dymoe.methods import METHODS, StepInfo, TaskInfo, build_method
from dymoe.methods.lwf import trainable_tensors
from dymoe.methods.penalties import distillation_kl, ewc_penalty_grad

TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)
N_MODULES = 7 * 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the tiny model's ops are far too small for intra-op threads; on a loaded 2-core box they only spin
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_llava(seed=0):
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        text_config={"model_type": "llama", **TEXT, "pad_token_id": 1},
        vision_config={"image_size": 8, "patch_size": 2, "num_channels": 3, "hidden_size": 16, "projection_dim": 16,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24},
        image_token_index=5, vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=16,
    )
    return LlavaForConditionalGeneration(cfg)


def task_samples(seed, n=4, lo=6, hi=64):
    """``n`` single-sample batches: 16 image tokens, then text; the last 5 tokens are the answer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(lo, hi, (1, 24), generator=g)
        ids[:, 2:18] = 5
        labels = torch.full_like(ids, -100)
        labels[:, 19:] = ids[:, 19:]
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                    "pixel_values": torch.randn(1, 3, 8, 8, generator=g)})
    return out


def collate(samples):
    return {k: torch.cat([s[k] for s in samples]) for k in samples[0]}


class FakeTrainer:
    """The part of the runner's trainer a method sees at ``after_task``."""

    def __init__(self, samples):
        self.samples = samples

    def iter_batches(self, n, batch_size=None, seed=0):
        bs = batch_size or 2
        for k in range(0, min(len(self.samples), n * bs), bs):
            yield collate(self.samples[k : k + bs])


def small_cfg():
    # one task's budget = 4 experts x rank 2 = 8
    return AdapterConfig(experts_per_group=4, expert_rank=2, top_k=4, alpha=16.0, dropout=0.0)


def build(name, **opts):
    model = tiny_llava()
    method = build_method({"name": name, **opts})
    adapter = inject(model, method.configure_adapter(small_cfg()))
    method.setup(model, adapter)
    return model, adapter, method


def run_task(model, adapter, method, index, samples, steps=3, lr=1e-2, on_step=None):
    """The runner's per-task protocol in a few lines; returns the loss terms of each step (floats)."""
    info = TaskInfo(index, f"task{index}", 2, train_samples=samples, total_steps=steps)
    method.before_task(info)
    opt = torch.optim.AdamW(adapter.trainable_parameters() + method.extra_parameters(), lr=lr, weight_decay=0.0)
    ctx = adapter.context
    model.train()
    log = []
    for step in range(steps):
        batch = collate(samples[2 * (step % 2) : 2 * (step % 2) + 2])
        ctx.policy = method.routing_policy("train")
        ctx.group_mask = method.group_mask(batch, "train")
        ctx.recording = True
        method.on_forward_start()
        out = model(**batch)
        terms = method.loss_terms(batch, out, StepInfo(step, steps))
        ctx.recording = False
        if on_step is not None:
            on_step(step, batch, out, terms)
        (out.loss + sum(terms.values())).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.append({k: float(v.detach()) for k, v in terms.items()})
    method.after_task(info, FakeTrainer(samples))
    return log


def snapshot(adapter, names=("lora_A", "lora_B", "router", "frozen_A", "frozen_B")):
    return {f"{m}.{n}": getattr(mod, n).detach().clone() for m, mod in adapter.modules.items() for n in names}


T1, T2 = task_samples(1, lo=6, hi=30), task_samples(2, lo=34, hi=64)


def test_registry_and_config_errors():
    assert {"moelora", "ewc", "lwf", "inclora", "olora"} <= set(METHODS.names())
    for bad, match in (({"name": "ewc", "lam": -1}, "lam"), ({"name": "lwf", "temperature": 0}, "temperature"),
                       ({"name": "olora", "lambda1": -0.1}, "lambda1"), ({"name": "ewc", "fisher_batches": 0}, "fisher"),
                       ({"name": "inclora", "depth": 3}, "depth")):
        with pytest.raises(ConfigError, match=match):
            build_method(bad)
    with pytest.raises(ConfigError, match="divisible"):
        build_method({"name": "moelora", "num_experts": 3}).configure_adapter(AdapterConfig())
    for name in ("moelora", "ewc", "lwf", "inclora", "olora"):
        assert "budget" in build_method({"name": name}).describe()


# ------------------------------------------------------------------------------------------------- MoELoRA


def test_moelora_adapter_defaults_follow_coin():
    cfg = build_method({"name": "moelora"}).configure_adapter(AdapterConfig())
    assert (cfg.experts_per_group, cfg.expert_rank, cfg.effective_bank_rank) == (8, 8, 64)  # 64 = one DyMoE task
    assert (cfg.router, cfg.temperature, cfg.top_k, cfg.init) == ("linear", 1.0, 8, "normal")
    assert cfg.effective_alpha / cfg.effective_bank_rank == 2.0  # CoIN: alpha 256 / r 128
    cfg = build_method({"name": "moelora", "num_experts": 4, "total_rank": 32}).configure_adapter(AdapterConfig())
    assert (cfg.experts_per_group, cfg.expert_rank, cfg.top_k) == (4, 8, 4)


def layer_a(adapter):
    return next(iter(adapter.modules.values())).lora_A.detach().clone()


def test_moelora_routes_densely_and_keeps_training_one_group():
    model, adapter, method = build("moelora", num_experts=4)  # total rank 8 → 4 experts × rank 2
    events = []
    adapter.context.observers.append(lambda ev: events.append(ev.weights.detach()))
    init = {}
    run_task(model, adapter, method, 0, T1, on_step=lambda step, *_: init.setdefault("A", layer_a(adapter)))
    layer = next(iter(adapter.modules.values()))
    a_param, ids = layer.lora_A, layer.expert_id.clone()
    # 4 experts x rank 2 stacked; CoIN's init A ~ N(0, 0.01) (kaiming-uniform would give std ~0.1 at d_in 32)
    assert a_param.shape == (8, 32) and 0.008 < float(init["A"].std()) < 0.012
    after1 = snapshot(adapter)
    run_task(model, adapter, method, 1, T2)
    assert len(events) == 2 * 3 * N_MODULES  # recorded on every training forward, never at task ends
    for w in events:  # [N, E]: every expert has weight > 0 for every token, and the softmax sums to 1
        assert w.shape[1] == 4 and bool((w > 0).all())
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0]))
    assert adapter.groups() == [0] and layer.num_frozen == 0 and torch.equal(layer.expert_id, ids)
    assert layer.lora_A is a_param  # the same group (same Parameter) kept training on task 2
    after2 = snapshot(adapter)
    assert all(not torch.equal(after1[k], after2[k]) for k in after2 if k.endswith(("lora_A", "lora_B", "router")))


# ------------------------------------------------------------------------------------------------------ EWC


def naive_fisher(model, adapter, samples):
    """Mean over single samples of grad² via ``.backward()`` and ``.grad`` (another route than the method's)."""
    params = trainable_tensors(adapter)
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    model.eval()
    for s in samples:
        for p in params.values():
            p.grad = None
        model(**s).loss.backward()
        for k, p in params.items():
            if p.grad is not None:
                acc[k] += p.grad**2
    for p in params.values():
        p.grad = None
    return {k: v / len(samples) for k, v in acc.items()}


def test_ewc_two_tasks():
    model, adapter, method = build("ewc", lam=50.0, fisher_batches=3)
    assert adapter.config.router == "none" and adapter.config.effective_bank_rank == 8  # the same adapter as lora
    log1 = run_task(model, adapter, method, 0, T1)
    assert all(t["ewc"] == 0.0 for t in log1)
    f1 = naive_fisher(model, adapter, T1[:3])  # fisher_batches=3, batch_size=1: the first three samples
    assert set(method.fisher) == set(f1) and any(float(v.sum()) > 0 for v in f1.values())
    for k in f1:
        torch.testing.assert_close(method.fisher[k], f1[k], rtol=1e-5, atol=1e-12)
    theta_star = {k: v.clone() for k, v in method.anchor.items()}

    # θ = θ* now (no update since task 1 ended): zero, then quadratic growth and the analytic gradient
    batch = collate(T2[:2])
    assert method.loss_terms(batch, None, StepInfo(0, 3))["ewc"].item() == 0.0
    params = trainable_tensors(adapter)
    g = torch.Generator().manual_seed(5)
    delta = {k: 1e-2 * torch.randn(p.shape, generator=g) for k, p in params.items()}
    values = []
    with torch.no_grad():
        for scale in (1.0, 2.0):
            for k, p in params.items():
                p.copy_(theta_star[k] + scale * delta[k])
            values.append(method.loss_terms(batch, None, StepInfo(0, 3))["ewc"].item())
    hand = 0.5 * 50.0 * sum(float((method.fisher[k] * delta[k] ** 2).sum()) for k in delta)
    assert values[0] == pytest.approx(hand, rel=1e-5) and values[0] > 0
    assert values[1] == pytest.approx(4 * values[0], rel=1e-5)  # quadratic in the distance
    penalty = method.loss_terms(batch, None, StepInfo(0, 3))["ewc"]
    grads = torch.autograd.grad(penalty, list(params.values()))
    analytic = ewc_penalty_grad(params, method.fisher, method.anchor, 50.0)
    for (k, p), grad in zip(params.items(), grads):
        torch.testing.assert_close(grad, 50.0 * method.fisher[k] * (p.detach() - theta_star[k]))
        torch.testing.assert_close(grad, analytic[k])
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(theta_star[k])

    log2 = run_task(model, adapter, method, 1, T2)
    assert log2[0]["ewc"] == 0.0 and log2[-1]["ewc"] > 0.0
    # Fisher summed over tasks, θ* moved to the end of task 2
    f2 = naive_fisher(model, adapter, T2[:3])
    for k in f1:
        torch.testing.assert_close(method.fisher[k], f1[k] + f2[k], rtol=1e-5, atol=1e-12)
    assert any(not torch.equal(method.anchor[k], theta_star[k]) for k in theta_star)
    # state round trip
    state = method.state_dict()
    other = build_method({"name": "ewc", "lam": 50.0})
    other.setup(model, adapter)
    other.load_state_dict({k: v.clone() for k, v in state.items()})
    batch = collate(T2[:2])
    assert other.loss_terms(batch, None, StepInfo(0, 1))["ewc"].item() == method.loss_terms(batch, None, StepInfo(0, 1))["ewc"].item()
    with pytest.raises(ValueError):
        other.load_state_dict({"fisher.x": torch.zeros(1)})


# ------------------------------------------------------------------------------------------------------ LwF


def test_lwf_two_tasks():
    model, adapter, method = build("lwf")
    events = []
    adapter.context.observers.append(lambda ev: events.append(ev))
    log1 = run_task(model, adapter, method, 0, T1)
    assert all(t["lwf"] == 0.0 for t in log1) and method.teacher is None
    # the reference teacher: a whole copy of the model after task 1 (what the method avoids keeping)
    ref_teacher = copy.deepcopy(model).eval()
    seen = {}

    def check(step, batch, out, terms):
        # one recorded forward per step: the teacher's forward is not seen by observers
        assert len(events) == (3 + step + 1) * N_MODULES
        assert model.training and all(m.training for m in model.modules())  # modes restored after the teacher
        with torch.no_grad():
            z_ref = ref_teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        expected = distillation_kl(out.logits, z_ref, batch["labels"], 2.0)
        assert terms["lwf"].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)
        seen[step] = terms["lwf"].item()

    log2 = run_task(model, adapter, method, 1, T2, on_step=check)
    assert seen[0] == pytest.approx(0.0, abs=1e-6)  # student == teacher before the first update
    assert log2[1]["lwf"] > 1e-6 and log2[2]["lwf"] > 1e-6
    # the teacher is the pre-task snapshot, the adapter moved on
    current = trainable_tensors(adapter)
    assert all(not torch.equal(method.teacher[k], current[k]) for k in current if k.endswith("lora_B"))
    state = method.state_dict()
    assert set(state) == {f"teacher.{k}" for k in current}
    other = build_method({"name": "lwf"})
    other.setup(model, adapter)
    other.load_state_dict(state)
    assert all(torch.equal(other.teacher[k], method.teacher[k]) for k in current)


# -------------------------------------------------------------------------------------------------- IncLoRA


def test_inclora_freezes_earlier_loras_bit_identically():
    model, adapter, method = build("inclora")
    weights = []
    adapter.context.observers.append(lambda ev: weights.append(ev.weights.detach()))
    run_task(model, adapter, method, 0, T1)
    layer = next(iter(adapter.modules.values()))
    assert adapter.groups() == [0] and layer.num_frozen == 1 and not layer.has_trainable_group
    task1 = snapshot(adapter, ("frozen_A", "frozen_B"))
    assert any(float(v.abs().sum()) > 0 for k, v in task1.items() if k.endswith("frozen_B"))  # task 1 did train
    run_task(model, adapter, method, 1, T2)
    assert adapter.groups() == [0, 1] and layer.num_frozen == 2 and layer.frozen_A.shape == (16, 32)
    for name, mod in adapter.modules.items():
        assert torch.equal(mod.frozen_A[:8], task1[f"{name}.frozen_A"])
        assert torch.equal(mod.frozen_B[:, :8], task1[f"{name}.frozen_B"])
        assert float(mod.frozen_B[:, 8:].abs().sum()) > 0  # the task-2 LoRA trained
    # router "none": every present LoRA has weight 1 (outputs summed); task 2 saw two
    assert {w.shape[1] for w in weights} == {1, 2} and all(bool((w == 1).all()) for w in weights)


# ---------------------------------------------------------------------------------------------------- O-LoRA


def test_olora_orthogonality_term():
    model, adapter, method = build("olora", lambda1=0.05, lambda2=0.01)
    first = {}

    def l2_ref(step, batch, out, terms):
        if step == 0:  # λ2 Σ (‖A‖_F + ‖B‖_F) by hand, with B = 0 before the first update
            first["ref"] = 0.01 * sum(float((m.lora_A.detach() ** 2).sum().sqrt()) for m in adapter.modules.values())
            first["got"] = terms["olora_l2"].item()

    log1 = run_task(model, adapter, method, 0, T1, on_step=l2_ref)
    assert all(t["olora_orth"] == 0.0 for t in log1)  # no earlier A on task 1
    assert first["got"] == pytest.approx(first["ref"], rel=1e-5) and first["ref"] > 0

    def check(step, batch, out, terms):
        # reference: Σ_modules Σ_ij |Σ_k A_old[i,k] A_new[j,k]| by broadcasting, times λ1
        ref = sum(float((m.frozen_A[:, None, :] * m.lora_A.detach()[None, :, :]).sum(-1).abs().sum())
                  for m in adapter.modules.values())
        assert ref > 0 and terms["olora_orth"].item() == pytest.approx(0.05 * ref, rel=1e-5)
        if step == 0:
            grads = torch.autograd.grad(terms["olora_orth"], [m.lora_A for m in adapter.modules.values()],
                                        retain_graph=True)
            for m, g in zip(adapter.modules.values(), grads):
                sign = torch.sign(m.frozen_A @ m.lora_A.detach().T)  # [r_old, r_new]
                torch.testing.assert_close(g, 0.05 * sign.T @ m.frozen_A)
            assert not any(m.frozen_A.requires_grad for m in adapter.modules.values())

    run_task(model, adapter, method, 1, T2, on_step=check)
    assert adapter.groups() == [0, 1]


def test_side_forward_restores_modes_and_context():
    from dymoe.methods.lwf import side_forward

    model, adapter, _ = build("lwf")
    model.train()
    model.model.vision_tower.eval()  # a mixed state must come back as it was
    ctx = adapter.context
    policy, mask = (lambda s, layer: s), torch.ones(1, 1, dtype=torch.bool)
    ctx.recording, ctx.policy, ctx.group_mask = True, policy, mask
    with side_forward(model, ctx):
        assert not any(m.training for m in model.modules()) and ctx.recording is False
        ctx.policy, ctx.group_mask = None, None  # what a Fisher pass may set per batch
    assert ctx.recording is True and ctx.policy is policy and ctx.group_mask is mask
    assert model.training and not model.model.vision_tower.training
    assert all(m.training for n, m in model.named_modules() if "vision_tower" not in n)
