"""SMoE-DSAL's plugin on the tiny backbone, in process: the layer it builds, k = 0 = the base model exactly, the
loss terms against the functional math on captured layer inputs, the prefill selection (= the argmin of every
module's DSAL on each layer's input) reused while decoding (cached generation = uncached), a learned domain's
module bit-identical after a later domain's training steps, and the paper's parameter counts at 7B.

Ablation 2 (DSAL → EDI) and "Ours+" (App. D): the pure functions against hand numbers; the planning phase's prototype
= the mean of the representations computed directly; EDI's pick = the nearest prototype by hand, and right in a
two-domain case; μ = each module's mean DSAL over its training samples computed directly; Ours+'s module sets and
layer outputs against the DSAL values and the per-module outputs of each layer computed by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dymoe.config import load_config
from dymoe.layers.moe_ffn import MoEFFN
from dymoe.methods.base import BatchInfo, StepInfo, TaskInfo
from dymoe.methods.smoe_dsal.functional import dsal_loss, expected_embeddings
from dymoe.methods.smoe_dsal.identify import edi_features, nearest_prototype, plus_modules
from dymoe.methods.smoe_dsal.method import LayerLookup, SMoEDSAL
from dymoe.runner.planning import Planner

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.yaml"
PAPER = ROOT / "configs" / "smoe" / "llava-1.5-7b-smoe-dsal.yaml"
SETTINGS = [
    "method.name=smoe_dsal",
    "method.expert_width=8",
    "method.projector_dim=4",
    "benchmark.order=[ScienceQA, ImageNet]",
    "benchmark.max_train_samples=8",
    "benchmark.max_eval_samples=4",
    "training.batch_size=4",
    "trackers=[]",
]
GEN_KEYS = ("input_ids", "attention_mask", "pixel_values")


def _run(tmp_path: Path, name: str, extra=()):
    from dymoe.runner.continual import ContinualRun

    run = ContinualRun(load_config(SMOKE, SETTINGS + list(extra)), tmp_path / name)
    run.setup()
    return run


def _info(run, k: int) -> TaskInfo:
    task = run.tasks[k]
    return TaskInfo(index=k, name=task.name, num_tasks=len(run.tasks), train_samples=run.train_set(task))


def _learn(run, k: int, scale: float = 0.5, seed: int = 0) -> None:
    """Domain ``k`` without training: its module and projector drawn at random (seeded), then frozen."""
    method = run.method
    method.before_task(_info(run, k))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(run.adapter.trainable_parameters()) + method.extra_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    method.after_task(_info(run, k))


def _gen_batch(run, k: int, n: int = 3, samples: list | None = None) -> dict:
    from dymoe.data.coin import TestSample
    from dymoe.data.collate import build_generation_batch

    samples = run.train_set(run.tasks[k])[:n] if samples is None else samples
    qs = [TestSample(question_id=s.id, image=s.image, prompt=s.turns[0][0], reference={}) for s in samples]
    gen = build_generation_batch(run.processor, qs, max_length=run.cfg.evaluation.max_length)
    return {k: v for k, v in gen.items() if k in GEN_KEYS}


def test_the_layer_and_k0_is_the_base_model(tmp_path, cache_env):
    run = _run(tmp_path, "layer")
    method, adapter = run.method, run.adapter
    assert isinstance(method, SMoEDSAL)
    assert method.layer_names == ["model.language_model.layers.0.mlp", "model.language_model.layers.1.mlp"]
    method.before_task(_info(run, 0))
    layer = adapter.modules[method.layer_names[0]]
    assert isinstance(layer, MoEFFN) and layer.router_mode == "at" and layer.expert_sizes == [8] * 4
    assert method.owned_modules["proj_0"].weight.shape == (2, 4, 64) and method.owned_modules["proj_0"].weight.requires_grad
    batch = {k: v for k, v in run.trainer.collator(run.train_set(run.tasks[0])[:2]).items() if k in GEN_KEYS}
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.normal_(0, 0.5)
        for m in adapter.modules.values():
            m.router_b2[0] = 1e4  # the threshold above every expert score: k_t = 0 for every token
        run.model.eval()
        with adapter.context.use(bypass=True):
            base = run.model(**batch).logits
        assert torch.equal(run.model(**batch).logits, base)  # k = 0: exactly the base model
        for m in adapter.modules.values():
            m.router_b2[0] = -1e4  # every expert active
        assert not torch.allclose(run.model(**batch).logits, base, atol=1e-3)


def test_loss_terms_are_the_functional_math_on_the_layer_inputs(tmp_path, cache_env):
    from dymoe.runner.trainer import forward_loss

    run = _run(tmp_path, "loss")
    method, adapter = run.method, run.adapter
    method.before_task(_info(run, 0))
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.normal_(0, 0.3)
    batch = {k: v for k, v in run.trainer.collator(run.train_set(run.tasks[0])[:3]).items()
             if isinstance(v, torch.Tensor) and k in GEN_KEYS + ("labels",)}
    seen: dict[str, torch.Tensor] = {}
    hooks = [run.model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: seen.__setitem__(n, args[0].detach())) for n in method.layer_names]
    hooks.append(run.model.get_submodule("model.language_model.layers.0").register_forward_pre_hook(
        lambda mod, args, kw: seen.__setitem__("h0", kw.get("hidden_states", args[0] if args else None).detach()),
        with_kwargs=True))
    info = BatchInfo(phase="train", task_index=0, task=run.tasks[0].name)
    _, terms, _ = forward_loss(run.model, adapter, method, batch, StepInfo(0, 1), info=info)
    for h in hooks:
        h.remove()
    prompt = batch["attention_mask"].bool() & (batch["labels"] == -100)
    w_em = run.model.get_input_embeddings().weight.detach()
    e = torch.zeros_like(seen["h0"])
    e[prompt] = expected_embeddings(seen["h0"][prompt], w_em)[0]
    want = 0.0
    for li, n in enumerate(method.layer_names):
        proj = method.owned_modules["proj_0"]
        want += float(dsal_loss(seen[n], e, prompt, w_em, adapter.modules[n].group_tensors(0), 4, proj.weight[li],
                                proj.bias[li]).mean())
    assert set(terms) == {"dsal", "balance"}
    assert float(terms["dsal"]) == pytest.approx(0.1 * want, rel=1e-5)
    assert terms["dsal"].requires_grad and float(terms["balance"]) >= 0


def test_prefill_selection_is_the_dsal_argmin_and_is_reused_while_decoding(tmp_path, cache_env):
    run = _run(tmp_path, "select")
    method, adapter, model = run.method, run.adapter, run.model
    _learn(run, 0, seed=1)
    _learn(run, 1, seed=2)
    model.eval()
    gen = _gen_batch(run, 0)
    routing = method.batch_routing(gen, BatchInfo(phase="eval", task_index=0, task="ScienceQA", eval_set="ScienceQA"))
    lookup, predicted = routing["selector"], routing["predicted_task"]
    picks = torch.stack([lookup.chosen[id(m)] for m in method.layers], 1)  # [B, L]
    assert torch.equal(predicted, SMoEDSAL.majority(picks))
    # the oracle: every module's DSAL on each layer's input (the layers routed by the picks), argmin per sample
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: seen.__setitem__(n, args[0].detach())) for n in method.layer_names]
    hooks.append(model.get_submodule("model.language_model.layers.0").register_forward_pre_hook(
        lambda mod, args, kw: seen.__setitem__("h0", kw.get("hidden_states", args[0] if args else None).detach()),
        with_kwargs=True))
    am = gen["attention_mask"]
    with torch.no_grad(), adapter.context.use(selector=LayerLookup(lookup.chosen)):
        model(**gen, position_ids=(am.long().cumsum(-1) - 1).clamp_min(0))
    for h in hooks:
        h.remove()
    prompt = am.bool()
    w_em = model.get_input_embeddings().weight.detach()
    e = torch.zeros_like(seen["h0"])
    e[prompt] = expected_embeddings(seen["h0"][prompt], w_em)[0]
    for li, n in enumerate(method.layer_names):
        losses = torch.stack([dsal_loss(seen[n], e, prompt, w_em, adapter.modules[n].group_tensors(g), 4,
                                        method.owned_modules[f"proj_{g}"].weight[li],
                                        method.owned_modules[f"proj_{g}"].bias[li]) for g in (0, 1)], 1)
        assert torch.equal(losses.argmin(1), picks[:, li]), (n, losses)
    # generation: the lookup is asked once per layer at prefill, never while decoding; cached = uncached
    calls = []

    class Counting(LayerLookup):
        def __call__(self, layer, x, mask):
            calls.append(x.shape[1])
            return super().__call__(layer, x, mask)

    outs = {}
    for cache in (True, False):
        calls.clear()
        with torch.no_grad(), adapter.context.use(selector=Counting(lookup.chosen)):
            outs[cache] = model.generate(**gen, max_new_tokens=6, do_sample=False, use_cache=cache, min_new_tokens=6)
        if cache:
            assert len(calls) == len(method.layers) and set(calls) == {gen["input_ids"].shape[1]}
    assert torch.equal(outs[True], outs[False])
    # the per-sample choice matters: forcing every layer to the other module changes the logits
    other = {k: 1 - v for k, v in lookup.chosen.items()}
    with torch.no_grad():
        with adapter.context.use(selector=LayerLookup(lookup.chosen)):
            a = model(**gen).logits
        with adapter.context.use(selector=LayerLookup(other)):
            b = model(**gen).logits
    assert not torch.allclose(a, b, atol=1e-4)


def test_a_learned_domain_is_bit_identical_after_the_next_domain_trains(tmp_path, cache_env):
    from dymoe.runner.trainer import forward_loss

    run = _run(tmp_path, "frozen")
    method, adapter = run.method, run.adapter
    _learn(run, 0, seed=3)
    before = {k: t.detach().clone() for k, t in adapter.named_tensors()}
    proj0 = {k: t.detach().clone() for k, t in method.owned_modules["proj_0"].state_dict().items()}
    method.before_task(_info(run, 1))
    params = adapter.trainable_parameters() + method.extra_parameters()
    assert all(not p.requires_grad for p in method.owned_modules["proj_0"].parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    batch = {k: v for k, v in run.trainer.collator(run.train_set(run.tasks[1])[:4]).items()
             if isinstance(v, torch.Tensor) and k in GEN_KEYS + ("labels",)}
    info = BatchInfo(phase="train", task_index=1, task=run.tasks[1].name)
    for step in range(3):
        loss, terms, _ = forward_loss(run.model, adapter, method, batch, StepInfo(step, 3), info=info)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(terms["dsal"]) > 0
    method.after_task(_info(run, 1))
    for name, layer in adapter.modules.items():
        g0 = layer.group_tensors(0)
        n = layer.expert_sizes.count(8) // 2 * 8  # group 0's slots come first
        assert torch.equal(g0["w_gate"], before[f"{name}.frozen_w_gate"][:n])
        assert torch.equal(g0["w_down"], before[f"{name}.frozen_w_down"][:, :n])
        assert torch.equal(g0["router_w2"], before[f"{name}.frozen_router_w2"])
        assert not torch.equal(layer.group_tensors(1)["w_down"], torch.zeros_like(layer.group_tensors(1)["w_down"]))
    for k, v in method.owned_modules["proj_0"].state_dict().items():
        assert torch.equal(v, proj0[k])


def test_paper_config_loads_against_the_tiny_backbone_and_its_7b_arithmetic():
    """Table 3 at LLaVA-1.5-7B: 3·4096·128·4·32 = 201,326,592 expert parameters per domain; with the routers
    (Linear(4096,16)→SiLU→Linear(16,5)) and the projectors (Linear(4096,32)) 207.6M ≈ "208M learnable"; at the
    paper's 0.81 experts per token 42.9M activated ≈ "42M"."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dymoe.injection import inject
    from dymoe.methods import build_method

    cfg = load_config(PAPER, ["backbone.path=tiny:test"])
    method = build_method(cfg.method)
    o = method.options
    assert (o.num_experts, o.expert_width, o.beta, o.eta, o.router, o.selection) == (4, 128, 0.1, 0.1, "at", "dsal")
    assert (cfg.training.lr, cfg.training.global_batch_size) == (2e-4, 16)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                             num_attention_heads=32, vocab_size=32000))
    adapter = inject(model, method.configure_adapter(cfg.adapter))
    adapter.add_group(0)
    rep = adapter.parameter_report()
    assert rep["experts_by_group"][0] == 201_326_592
    routers = rep["routers_by_group"][0]
    assert routers == 32 * (4096 * 16 + 16 + 16 * 5 + 5)
    projectors = 32 * (4096 * 32 + 32)
    assert 207e6 < rep["experts_by_group"][0] + routers + projectors < 208.5e6
    act = adapter.parameter_report({n: 0.81 for n in adapter.modules})["activated_per_token"]
    assert act == pytest.approx(0.81 * 201_326_592 / 4 + routers)
    assert 42e6 < act < 43.5e6


def test_options_are_checked():
    from dymoe.errors import ConfigError
    from dymoe.methods import build_method

    with pytest.raises(ConfigError, match="selection"):
        build_method({"name": "smoe_dsal", "selection": "clip"})
    with pytest.raises(ConfigError, match="variants"):
        build_method({"name": "smoe_dsal", "variants": ["ours+"]})
    with pytest.raises(ConfigError, match="beta"):
        build_method({"name": "smoe_dsal", "beta": -1})


def test_ablation_options_reach_the_layer_and_the_losses(tmp_path, cache_env):
    """(1) w/o AT-Router: a top-1 softmax router (no threshold, so no L3); (5) w/o (1+k): the layer's flag; (3)
    the router-margin selection picks per layer the module with the larger prompt mean of max_n s_n − α."""
    from dymoe.runner.trainer import forward_loss

    run = _run(tmp_path, "ablate", ["method.router=topk", "method.scale_by_count=false"])
    method, adapter = run.method, run.adapter
    method.before_task(_info(run, 0))
    layer = adapter.modules[method.layer_names[0]]
    assert layer.router_mode == "topk" and layer.top_k == 1 and not layer.scale_by_count
    batch = {k: v for k, v in run.trainer.collator(run.train_set(run.tasks[0])[:2]).items()
             if isinstance(v, torch.Tensor) and k in GEN_KEYS + ("labels",)}
    _, terms, _ = forward_loss(run.model, adapter, method, batch, StepInfo(0, 1),
                               info=BatchInfo(phase="train", task_index=0, task="ScienceQA"))
    assert set(terms) == {"dsal"}
    run2 = _run(tmp_path, "margin")
    _learn(run2, 0, seed=4)
    _learn(run2, 1, seed=5)
    gen = _gen_batch(run2, 0, n=2)
    run2.model.eval()
    picks = run2.method.select(gen, "router")  # [B, L]
    seen: dict[str, torch.Tensor] = {}
    hooks = [run2.model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: seen.__setitem__(n, args[0].detach())) for n in run2.method.layer_names]
    am = gen["attention_mask"]
    chosen = {id(m): picks[:, li] for li, m in enumerate(run2.method.layers)}
    with torch.no_grad(), run2.adapter.context.use(selector=LayerLookup(chosen)):
        run2.model(**gen, position_ids=(am.long().cumsum(-1) - 1).clamp_min(0))
    for h in hooks:
        h.remove()
    for li, n in enumerate(run2.method.layer_names):
        layer = run2.adapter.modules[n]
        margins = []
        for g in (0, 1):
            t = layer.group_tensors(g)
            x = seen[n].reshape(-1, seen[n].shape[-1]).double()
            s = (torch.nn.functional.silu(x @ t["router_w1"].double().T + t["router_b1"].double())
                 @ t["router_w2"].double().T + t["router_b2"].double()).reshape(*seen[n].shape[:2], -1)
            m = (s[..., 1:].max(-1).values - s[..., 0]) * am
            margins.append(m.sum(1) / am.sum(1))
        assert torch.equal(torch.stack(margins, 1).argmax(1), picks[:, li])


def test_nearest_prototype_and_plus_sets_by_hand():
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    z = torch.tensor([[3.0, 1.0], [0.2, 0.5], [-0.1, -5.0], [-2.0, 1.9]])
    # cosines: row 0 -> (0.95, 0.32, -0.89); row 1 -> (0.37, 0.93, -0.92); row 2 -> (-0.02, -1.0, 0.72);
    # row 3 -> (-0.72, 0.69, 0.02)
    assert nearest_prototype(z, protos).tolist() == [0, 1, 2, 1]
    losses = torch.tensor([[2.0, 3.0, 1.0], [0.5, 0.4, 3.0]])
    mu = torch.tensor([2.5, 0.45, 0.9])
    # row 0: primary 2 (1.0); aux: μ0 2.5 > 2.0 yes, μ1 0.45 > 3.0 no, μ2 0.9 > 1.0 no -> {0, 2}
    # row 1: primary 1 (0.4); aux: 2.5 > 0.5 yes, 0.45 > 0.4 yes, 0.9 > 3.0 no -> {0, 1}
    assert plus_modules(losses, mu).tolist() == [[True, False, True], [True, True, False]]


def _features_by_hand(run, samples):
    """The EDI representations of ``samples`` in one batch, the experts bypassed (the frozen backbone)."""
    method, ctx = run.method, run.adapter.context
    batch = run.trainer.collator(samples)
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    image_sample = batch.get("image_sample")
    image_sample = image_sample.tolist() if isinstance(image_sample, torch.Tensor) else list(range(len(samples)))
    cfg = run.model.config
    run.model.eval()
    with torch.no_grad(), ctx.use(bypass=True):
        return edi_features(run.model, method._vision, inputs, image_sample, kind="image_text",
                            vision_dim=method._vision_dim, image_token_id=cfg.image_token_id,
                            pad_token_id=cfg.text_config.pad_token_id or 0)


def test_edi_prototypes_are_the_mean_representation_and_pick_the_nearest(tmp_path, cache_env):
    run = _run(tmp_path, "edi")
    method = run.method
    assert method.plans and method._vision is not None
    for k in (0, 1):
        method.plan(_info(run, k), Planner(run, _info(run, k)))
        method.before_task(_info(run, k))
        method.after_task(_info(run, k))
        want = _features_by_hand(run, run.train_set(run.tasks[k])).mean(0)  # [D]
        assert method.prototypes[k].shape == want.shape == (method._vision_dim + 64,)
        torch.testing.assert_close(method.prototypes[k], want, atol=1e-5, rtol=1e-5)
    assert set(method.plan_state()) == {"edi_prototype"}
    protos = torch.stack([method.prototypes[0], method.prototypes[1]]).double()
    want_right = 0
    for k in (0, 1):
        gen = _gen_batch(run, k, n=4)
        info = BatchInfo(phase="eval", task_index=k, task=run.tasks[k].name, eval_set=run.tasks[k].name,
                         image_sample=list(range(4)))
        routing = method.batch_routing(gen, BatchInfo(**{**info.__dict__, "variant": "edi"}))
        picks = torch.stack([routing["selector"].chosen[id(m)] for m in method.layers], 1)  # [B, L]
        z = _features_by_hand(run, run.train_set(run.tasks[k])[:4]).double()
        cos = (z / z.norm(dim=1, keepdim=True)) @ (protos / protos.norm(dim=1, keepdim=True)).T  # [B, 2]
        assert torch.equal(picks, cos.argmax(1)[:, None].expand(4, len(method.layers)))
        method.batch_routing(gen, info)  # the main (DSAL) evaluation scores EDI beside it
        want_right += int(picks[:, 0].eq(k).sum())
    report = method.evaluation_metrics()
    assert report["edi"] == {"features": "image_text", "instances": 8,
                             "accuracy_instance": round(100.0 * want_right / 8, 2)}
    assert report["dsal"]["instances"] == 8
    state = method.state_dict()
    fresh = type(method)(method.options)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.prototypes[1], method.prototypes[1]) and fresh.domains == 2
    # a constructed two-domain case (the random tiny backbone does not tell ScienceQA from ImageNet by itself):
    # each domain's training data is one question, so the nearest prototype of that question is its own domain's
    one = [run.train_set(run.tasks[0])[0], run.train_set(run.tasks[1])[0]]
    for k in (0, 1):
        info = dataclasses.replace(_info(run, k), train_samples=[one[k]])
        method.plan(info, Planner(run, info))
    assert method.edi_pick(_gen_batch(run, 0, n=1, samples=one), [0, 1]).tolist() == [0, 1]


def test_mean_dsal_is_the_mean_over_the_training_samples(tmp_path, cache_env):
    run = _run(tmp_path, "mu")
    method, model, adapter = run.method, run.model, run.adapter
    _learn(run, 0, seed=6)
    samples = run.train_set(run.tasks[0])
    run.trainer.samples = samples
    mu = method.measure_mean_dsal(0, run.trainer)  # [L]
    batch = {k: v for k, v in run.trainer.collator(samples).items() if isinstance(v, torch.Tensor)
             and k in GEN_KEYS + ("labels",)}
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: seen.__setitem__(n, args[0].detach())) for n in method.layer_names]
    hooks.append(model.get_submodule("model.language_model.layers.0").register_forward_pre_hook(
        lambda mod, args, kw: seen.__setitem__("h0", kw.get("hidden_states", args[0] if args else None).detach()),
        with_kwargs=True))
    chosen = {id(m): torch.zeros(len(samples), dtype=torch.long) for m in method.layers}
    model.eval()
    with torch.no_grad(), adapter.context.use(selector=LayerLookup(chosen)):
        model(**{k: v for k, v in batch.items() if k != "labels"})
    for h in hooks:
        h.remove()
    prompt = batch["attention_mask"].bool() & (batch["labels"] == -100)
    w_em = model.get_input_embeddings().weight.detach()
    e = torch.zeros_like(seen["h0"])
    e[prompt] = expected_embeddings(seen["h0"][prompt], w_em)[0]
    proj = method.owned_modules["proj_0"]
    want = torch.stack([dsal_loss(seen[n], e, prompt, w_em, adapter.modules[n].group_tensors(0), 4, proj.weight[li],
                                  proj.bias[li]).mean() for li, n in enumerate(method.layer_names)])
    torch.testing.assert_close(mu, want.float(), atol=1e-5, rtol=1e-5)


def test_plus_sets_and_layer_outputs_by_hand(tmp_path, cache_env):
    run = _run(tmp_path, "plus")
    method, model, adapter = run.method, run.model, run.adapter
    _learn(run, 0, seed=1)
    _learn(run, 1, seed=2)
    # μ: module 0 auxiliary in layer 0 always and in layer 1 never (DSAL > 0); module 1 the other way round
    method.mean_dsal = {0: torch.tensor([1e9, 0.0]), 1: torch.tensor([0.0, 1e9])}
    model.eval()
    gen = _gen_batch(run, 0, n=3)
    info = BatchInfo(phase="eval", task_index=0, task="ScienceQA", eval_set="ScienceQA", variant="plus")
    routing = method.batch_routing(gen, info)
    picks = torch.stack([routing["selector"].chosen[id(m)] for m in method.layers], 1)  # [B, L]
    sets = {li: method._mix[id(m)][1].clone() for li, m in enumerate(method.layers)}
    # the routed forward: every layer's input and output
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for n in method.layer_names:
        hooks.append(model.get_submodule(n).register_forward_hook(
            lambda mod, args, out, n=n: seen.update({n: args[0].detach(), n + ".out": out.detach()})))
    hooks.append(model.get_submodule("model.language_model.layers.0").register_forward_pre_hook(
        lambda mod, args, kw: seen.__setitem__("h0", kw.get("hidden_states", args[0] if args else None).detach()),
        with_kwargs=True))
    am = gen["attention_mask"]
    with torch.no_grad(), adapter.context.use(selector=routing["selector"]):
        model(**gen, position_ids=(am.long().cumsum(-1) - 1).clamp_min(0))
    for h in hooks:
        h.remove()
    mix, method._mix = method._mix, {}  # the per-module outputs below: the layer alone
    prompt = am.bool()
    w_em = model.get_input_embeddings().weight.detach()
    e = torch.zeros_like(seen["h0"])
    e[prompt] = expected_embeddings(seen["h0"][prompt], w_em)[0]
    for li, n in enumerate(method.layer_names):
        layer = adapter.modules[n]
        losses = torch.stack([dsal_loss(seen[n], e, prompt, w_em, layer.group_tensors(g), 4,
                                        method.owned_modules[f"proj_{g}"].weight[li],
                                        method.owned_modules[f"proj_{g}"].bias[li]) for g in (0, 1)], 1)  # [B, 2]
        assert torch.equal(losses.argmin(1), picks[:, li])
        want_sets = F.one_hot(losses.argmin(1), 2).bool()
        want_sets[:, li] = True
        assert torch.equal(sets[li], want_sets), (li, losses)
        outs = []
        for g in (0, 1):
            adapter.context.start_forward()  # forget the routed forward's cached selections
            every = LayerLookup({id(layer): torch.full((seen[n].shape[0],), g, dtype=torch.long)})
            with torch.no_grad(), adapter.context.use(selector=every):
                outs.append(layer(seen[n]))
        w = want_sets.float()[:, :, None, None]  # [B, 2, 1, 1]
        want = (w[:, 0] * outs[0] + w[:, 1] * outs[1]) / w.sum(1)
        torch.testing.assert_close(seen[n + ".out"], want, atol=1e-6, rtol=1e-6)
    assert any(bool(v.sum(1).eq(2).any()) for v in sets.values())  # some layer really mixes (not vacuous)
    sizes = torch.stack([v.sum(1) for v in sets.values()]).double()  # [L, B] modules per (layer, instance)
    assert method.evaluation_metrics() == {"plus": {"mean_modules": round(float(sizes.mean()), 4),
                                                    "pairs": sizes.numel()}}
    method._mix = mix
    # generation under Ours+: cached = uncached (the sets are fixed at prefill like the selection)
    outs = {}
    for cache in (True, False):
        with torch.no_grad(), adapter.context.use(selector=routing["selector"]):
            outs[cache] = model.generate(**gen, max_new_tokens=4, do_sample=False, use_cache=cache, min_new_tokens=4)
    assert torch.equal(outs[True], outs[False])


def test_plus_needs_the_mean_dsal():
    from dymoe.errors import ConfigError
    from dymoe.methods import build_method

    with pytest.raises(ConfigError, match="mean_dsal_fraction"):
        build_method({"name": "smoe_dsal", "variants": ["plus"], "mean_dsal_fraction": 0})
    with pytest.raises(ConfigError, match="edi_features"):
        build_method({"name": "smoe_dsal", "edi_features": "clip"})
