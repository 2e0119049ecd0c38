"""SMoE-DSAL on several processes, the parts that run in one (tiny backbone): every trainable tensor takes part in
every micro-step's loss; the identification and activation counts cover the scored passes only.

DDP (``find_unused_parameters=False``) reduces a bucket only when each of its parameters got a gradient; a process
whose loss misses one skips the gradient all-reduce the others run. That was the two-process crash: on the
zero-weight micro-step of a partial global batch (routing not recorded) the DSAL projector, reached by L_DSAL only,
was out of the graph. The two-process comparison itself is ``tests/runner/test_multiprocess.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dymoe.config import load_config
from dymoe.methods.base import BatchInfo, StepInfo, TaskInfo
from dymoe.runner.trainer import forward_loss

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = ["method.name=smoe_dsal", "method.expert_width=8", "method.projector_dim=4",
            "benchmark.order=[ScienceQA, ImageNet]", "benchmark.max_train_samples=4", "benchmark.max_eval_samples=2",
            "training.batch_size=2", "trackers=[]"]
KEYS = ("input_ids", "attention_mask", "pixel_values", "labels")


def _run(tmp_path: Path, extra: list[str]):
    from dymoe.runner.continual import ContinualRun

    run = ContinualRun(load_config(ROOT / "configs" / "smoke.yaml", SETTINGS + extra), tmp_path / "run")
    run.setup()
    return run


@pytest.mark.parametrize("extra, keys", [
    ([], {"dsal", "balance"}),
    (["method.beta=0", "method.selection=router"], {"balance", "dsal_idle"}),  # ablation 3: no L_DSAL at all
])
def test_every_trainable_tensor_is_in_the_loss_of_recorded_and_zero_weight_steps(tmp_path, cache_env, extra, keys):
    run = _run(tmp_path, extra)
    method, adapter = run.method, run.adapter
    task = run.tasks[0]
    method.before_task(TaskInfo(index=0, name=task.name, num_tasks=2, train_samples=run.train_set(task)))
    params = adapter.trainable_parameters() + method.extra_parameters()
    names = {id(p): n for n, p in run.model.named_parameters()}
    assert any(names[id(p)].endswith("proj_0.weight") for p in params)
    batch = {k: v for k, v in run.trainer.collator(run.train_set(run.tasks[0])[:2]).items()
             if isinstance(v, torch.Tensor) and k in KEYS}
    info = BatchInfo(phase="train", task_index=0, task=run.tasks[0].name)
    for record in (True, False):  # False: the trainer's zero-weight micro-step
        loss, terms, _ = forward_loss(run.model, adapter, method, batch, StepInfo(0, 1), record=record, info=info)
        assert set(terms) == keys  # the same keys on every micro-step (the trainer all-reduces them by key)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        assert [names[id(p)] for p, g in zip(params, grads) if g is None] == []
        if not record or "dsal_idle" in keys:
            # the tie adds exactly zero: to the loss and to the projector's gradient
            assert all(float(terms[k].detach()) == 0.0 for k in keys - {"balance"})
            proj = [g for p, g in zip(params, grads) if "proj_" in names[id(p)]]
            assert proj and all(float(g.abs().max()) == 0.0 for g in proj)
        if not record:
            assert float(terms["balance"].detach()) == 0.0


def test_only_the_main_evaluation_of_a_benchmark_set_is_scored_and_counts_activations(tmp_path, cache_env):
    """The identification counts and the activated-expert counts cover the same passes: the main evaluation's
    benchmark sets. A variant's selection passes and the cost probe's (no true task) add to neither (they used to
    add activations: the inference-cost probe runs before each row's evaluation)."""
    from dymoe.data.coin import TestSample
    from dymoe.data.collate import build_generation_batch

    run = _run(tmp_path, ["method.variants=[router]"])
    method = run.method
    for k in (0, 1):  # two domains, modules drawn at random
        task = run.tasks[k]
        info = TaskInfo(index=k, name=task.name, num_tasks=2, train_samples=run.train_set(task))
        method.before_task(info)
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in run.adapter.trainable_parameters() + method.extra_parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
        method.after_task(info)
    qs = [TestSample(question_id=s.id, image=s.image, prompt=s.turns[0][0], reference={})
          for s in run.train_set(run.tasks[0])[:2]]
    gen = {k: v for k, v in build_generation_batch(run.processor, qs, max_length=128).items() if k in KEYS}
    run.model.eval()
    name = run.tasks[0].name
    main = BatchInfo(phase="eval", task_index=0, task=name, eval_set=name)
    method.batch_routing(gen, main)
    once = dict(method._stats)
    assert once["instances"] == 2 and once["tokens"] == 2 * float(gen["attention_mask"].sum())  # 2 layers
    for other in (BatchInfo(phase="eval", task_index=0, task=name, eval_set=name, variant="router"),
                  BatchInfo(phase="eval", task_index=-1, task="")):  # a variant; the cost probe
        method.batch_routing(gen, other)
        assert method._stats == once
    report = method.evaluation_metrics()["dsal"]  # one process: the counts as they are
    assert report["instances"] == 2
    assert report["mean_active_experts"] == pytest.approx(once["active"] / once["tokens"], abs=1e-4)
