"""D-MoLE's plugin on the tiny backbone, in process: the slots and layers are the paper's, the zero-cost proxy equals
the per-slot gradient norm computed directly with autograd, the summed binary-gate forward equals a loop over the
active experts (language model and vision tower), per-sample gates equal each sample alone, no task under threshold
gives exactly the pretrained output, and the router feature is the same at training and at generation time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dymoe.config import load_config
from dymoe.methods.base import BatchInfo, TaskInfo
from dymoe.methods.dmole.method import DMoLE

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.yaml"
SETTINGS = [
    "method.name=dmole",
    "benchmark.order=[ScienceQA, ImageNet]",
    "benchmark.max_train_samples=8",
    "benchmark.max_eval_samples=4",
    "training.batch_size=4",
    "trackers=[]",
    "method.proxy_fraction=0.5",
    "method.ae_epochs=5",
]
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values")


def _run(tmp_path: Path, name: str, extra=()):
    from dymoe.runner.continual import ContinualRun

    run = ContinualRun(load_config(SMOKE, SETTINGS + list(extra)), tmp_path / name)
    run.setup()
    return run


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, dymoe_cache):
    """One run set up once for the tests that leave it as they found it (no growth, no training)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYMOE_CACHE", str(dymoe_cache))
        yield _run(tmp_path_factory.mktemp("dmole-fresh"), "fresh")


def _info(run, k: int) -> TaskInfo:
    task = run.tasks[k]
    return TaskInfo(index=k, name=task.name, num_tasks=len(run.tasks), train_samples=run.train_set(task))


def _two_tasks(run) -> None:
    """Plan + grow two tasks without training; every expert gets random non-zero tensors, folded."""
    from dymoe.runner.planning import Planner

    for k in range(2):
        info = _info(run, k)
        run.method.plan(info, Planner(run, info))
        torch.manual_seed(10 + k)
        run.method.before_task(info)
        with torch.no_grad():
            for p in run.adapter.trainable_parameters():
                p.normal_(0, 0.3)
        run.method.after_task(info)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k in MODEL_KEYS}


def test_the_slots_and_the_layer_are_the_papers(fresh):
    run = fresh
    method, adapter = run.method, run.adapter
    assert isinstance(method, DMoLE)
    # 2 LLM layers + 2 CLIP layers, (qkv, o) each: 8 slots; q/k/v are three linears of one slot
    assert {m: sum(1 for v in method.modality.values() if v == m) for m in ("llm", "vision")} == {"llm": 4, "vision": 4}
    assert sorted(method.slots["model.vision_tower.encoder.layers.0.self_attn.qkv"]) == [
        f"model.vision_tower.encoder.layers.0.self_attn.{p}_proj" for p in ("k", "q", "v")]
    assert method.slots["model.vision_tower.encoder.layers.1.self_attn.o"] == [
        "model.vision_tower.encoder.layers.1.self_attn.out_proj"]
    assert method.slots["model.language_model.layers.1.self_attn.o"] == ["model.language_model.layers.1.self_attn.o_proj"]
    for name, layer in adapter.modules.items():
        assert layer.router_mode == "none" and layer.scaling == 2.0 and layer.bank_rank == 8
        assert layer.stream == ("vision" if "vision_tower" in name else "text")
    assert not any("mlp" in n or "fc" in n for n in adapter.modules)


def test_zero_cost_proxy_is_the_gradient_norm_of_each_slot(fresh, cache_env):
    from dymoe.models.llava import load_backbone
    from dymoe.runner.planning import Planner
    from dymoe.runner.resources import resolve_backbone_path

    run = fresh
    info = _info(run, 1)  # ImageNet: every sample has an image
    planner = Planner(run, info)
    scores, log = run.method._proxy(planner)
    assert log["samples"] == 4 and log["batches"] == 1
    # reference: the plain pretrained backbone, loss summed over the same subset's batches, torch.autograd.grad
    ref, _ = load_backbone(resolve_backbone_path(run.cfg.backbone.path), dtype="float32")
    ref.train(run.model.training)
    idx = planner.subset(0.5, seed=1)
    loss = sum(ref(**batch).loss for batch, _ in planner.batches(idx))
    expect = {}
    for slot, names in run.method.slots.items():
        lins = [ref.get_submodule(n) for n in names]
        weights = [lin.weight for lin in lins]
        biases = [lin.bias for lin in lins if lin.bias is not None]
        grads = torch.autograd.grad(loss, weights + biases, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, weights + biases)]
        gw = torch.cat([g.reshape(-1) for g in grads[: len(weights)]])
        gb = torch.cat([g.reshape(-1) for g in grads[len(weights):]]) if biases else torch.zeros(1)
        expect[slot] = float(gw.norm()) + float(gb.norm())
    assert scores.keys() == expect.keys()
    for slot in expect:
        assert scores[slot] == pytest.approx(expect[slot], rel=1e-5), slot
    # LLaVA reads the CLIP tower's second-to-last layer (vision_feature_layer -2): its last layer has no gradient
    last = [s for s in scores if s.startswith("model.vision_tower.encoder.layers.1.")]
    assert len(last) == 2 and all(scores[s] == 0.0 for s in last)
    live = [v for s, v in scores.items() if s not in last]
    assert len(set(live)) == len(live) and min(live) > 0  # a real signal: the other slots differ
    # the model is left as it was: frozen base weights without gradients
    assert all(not p.requires_grad and p.grad is None for n, p in run.model.named_parameters() if ".base." in n)


def test_summed_binary_gates_equal_a_loop_over_active_experts():
    from dymoe.layers.context import RoutingContext
    from dymoe.layers.moe_lora import MoELoRALinear

    torch.manual_seed(0)
    for stream in ("text", "vision"):
        ctx = RoutingContext()
        layer = MoELoRALinear(torch.nn.Linear(12, 10), alpha=16, bank_rank=8, router="none", dropout=0.0,
                              context=ctx, stream=stream, top_k=1)
        for g in range(3):
            layer.add_group(g, 1, 8)
            with torch.no_grad():
                layer.lora_B.normal_()
            layer.fold()
        x = torch.randn(3, 5, 12)  # 3 samples (vision: 3 images, image i of sample rows[i])
        gates = torch.tensor([[True, False, True], [False, False, False], [False, True, True]])
        rows = torch.tensor([2, 0, 1]) if stream == "vision" else None
        ctx.image_rows = rows
        ctx.group_mask = gates
        out = layer(x)
        a, b = layer.frozen_A, layer.frozen_B  # [3*8, 12], [10, 3*8]
        for i in range(3):
            g = gates[rows[i]] if rows is not None else gates[i]
            expect = layer.base(x[i])
            for k in range(3):
                if g[k]:
                    expect = expect + 2.0 * x[i] @ a[8 * k: 8 * k + 8].T @ b[:, 8 * k: 8 * k + 8].T
            torch.testing.assert_close(out[i], expect, atol=1e-5, rtol=1e-5)
        silent = 1 if rows is None else 2  # the row whose sample has no gate on: exactly the base output
        assert torch.equal(out[silent], layer.base(x[silent]))


def test_per_sample_gates_equal_each_sample_alone_and_none_is_the_pretrained_model(tmp_path, cache_env):
    run = _run(tmp_path, "gates")
    _two_tasks(run)
    method, model, ctx = run.method, run.model, run.adapter.context
    assert method.alloc.shape == (2, 8) and method.alloc.sum(1).tolist() == [4, 4]  # B = round(0.5 * 8)
    samples = run.train_set(run.tasks[1])[:3]  # ImageNet: every sample has an image
    batch = _inputs(run.trainer.collator(samples))
    model.eval()
    gates = torch.tensor([[True, True], [False, False], [False, True]])
    with torch.no_grad(), ctx.use(group_mask=gates):
        together = model(**batch).logits
    with torch.no_grad(), ctx.use(bypass=True):
        pretrained = model(**batch).logits
    for b in range(3):
        one = _inputs(run.trainer.collator([samples[b]]))
        with torch.no_grad(), ctx.use(group_mask=gates[b: b + 1]):
            alone = model(**one).logits[0]
        n = int(one["attention_mask"].sum())
        torch.testing.assert_close(together[b, :n], alone[:n], atol=1e-5, rtol=1e-5)
    assert torch.equal(together[1], pretrained[1])  # no gate on: exactly the pretrained output
    assert not torch.allclose(together[0], pretrained[0], atol=1e-4)  # and the experts do act
    # the router: with every threshold below every loss, evaluation routes every sample to the pretrained model
    method.taus = torch.full_like(method.taus, -1.0)
    info = BatchInfo(phase="eval", task_index=1, task="ImageNet", indices=[0, 1, 2], image_sample=[0, 1, 2], stage=2)
    decision = method.batch_routing(batch, info)
    assert not decision["group_mask"].any() and decision["predicted_task"].tolist() == [-1, -1, -1]
    with torch.no_grad(), ctx.use(group_mask=decision["group_mask"]):
        assert torch.equal(model(**batch).logits, pretrained)


def test_router_feature_is_the_same_at_training_and_at_generation(fresh):
    from dymoe.data.coin import TestSample
    from dymoe.data.collate import build_generation_batch

    run = fresh
    samples = run.train_set(run.tasks[0])[:4]  # ScienceQA: with and without images
    train = run.trainer.collator(samples)
    img = train["image_sample"].tolist() if "image_sample" in train else []
    f_train = run.method._features({k: v for k, v in train.items() if k in MODEL_KEYS + ("labels",)}, img)
    questions = [TestSample(question_id=s.id, image=s.image, prompt=s.turns[0][0], reference={}) for s in samples]
    gen = build_generation_batch(run.processor, questions, max_length=run.cfg.evaluation.max_length)
    img_g = gen["image_sample"].tolist() if "image_sample" in gen else img
    f_gen = run.method._features(_inputs(gen), img_g)
    assert f_train.shape == (4, 32 + 64)
    torch.testing.assert_close(f_train, f_gen, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(f_train.norm(dim=1), torch.ones(4))
    no_image = [i for i, s in enumerate(samples) if s.image is None]
    for i in no_image:
        assert torch.equal(f_train[i, :32], torch.zeros(32))


def test_options_are_checked():
    from dymoe.errors import ConfigError
    from dymoe.methods import build_method

    with pytest.raises(ConfigError, match="modalities"):
        build_method({"name": "dmole", "modalities": ["audio"]})
    with pytest.raises(ConfigError, match="eval_routing"):
        build_method({"name": "dmole", "eval_routing": "top3"})
    m = build_method({"name": "dmole"})
    assert (m.options.rank, m.options.effective_alpha, m.options.dropout, m.options.rho) == (8, 16.0, 0.05, 0.5)
    assert (m.options.min_vision_frac, m.options.threshold_multiplier, m.options.eval_top_k) == (0.25, 1.2, 2)


def test_seq_ft_merge_and_restart_equals_the_merged_base_plus_a_fresh_lora(tmp_path, cache_env):
    """The ``lora`` option ``merge_after_task`` (D-MoLE's Seq-FT): after task 1 the model is the base with the LoRA
    merged in (export's merge, W + s·BA) and task 2 trains a fresh LoRA (B = 0, only it trainable)."""
    import copy

    from dymoe.export.lora import merge_into_base
    from dymoe.runner.continual import ContinualRun

    settings = [s for s in SETTINGS if not s.startswith("method.")] + ["method.name=lora",
                                                                         "method.merge_after_task=true"]
    run = ContinualRun(load_config(SMOKE, settings), tmp_path / "seqft")
    run.setup()
    method, adapter, model = run.method, run.adapter, run.model
    method.before_task(_info(run, 0))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.normal_(0, 0.2)
    method.after_task(_info(run, 0))
    merged = copy.deepcopy(model)
    merge_into_base(merged, merged._dymoe_adapter)
    method.before_task(_info(run, 1))
    assert adapter.groups() == [0, 1] and all(
        not layer.lora_B.any() and layer.lora_A.requires_grad and not layer.frozen_A.requires_grad
        for layer in adapter.modules.values())
    batch = _inputs(run.trainer.collator(run.train_set(run.tasks[1])[:2]))
    model.eval()
    merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, merged(**batch).logits, atol=1e-5, rtol=1e-5)
