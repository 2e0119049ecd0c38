"""The task trainer against a plain-loop oracle: global batches, token-weighted accumulation, the partial last group,
the schedule in global steps, no gradient across task ends; the batch layout and its errors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import get_scheduler

from dymoe.cli.main import main
from dymoe.config import TrainingConfig, load_config
from dymoe.errors import ConfigError
from dymoe.methods.base import StepInfo, TaskInfo
from dymoe.runner.continual import ContinualRun
from dymoe.runner.trainer import Batching, answer_tokens, micro_batches, plan_batches, resolve_batching

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


# --------------------------------------------------------------------------- layout
def test_resolve_batching_derives_accumulation_from_the_global_batch():
    cfg = TrainingConfig(batch_size=16, global_batch_size=128)
    assert [resolve_batching(cfg, n).grad_accum for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert resolve_batching(cfg, 4) == Batching(128, 16, 2, 4)
    assert resolve_batching(TrainingConfig(batch_size=4, grad_accum=3), 2) == Batching(24, 4, 3, 2)
    assert resolve_batching(TrainingConfig(batch_size=4), 3) == Batching(12, 4, 1, 3)
    assert resolve_batching(TrainingConfig(batch_size=16, global_batch_size=128, grad_accum=2), 4).grad_accum == 2
    assert resolve_batching(cfg, 1).describe() == "global batch 128 = 16 per device × 8 accumulation steps × 1 process"


def test_a_global_batch_that_does_not_divide_names_the_three_numbers():
    with pytest.raises(ConfigError, match=r"global_batch_size 128 is not divisible by training.batch_size 16 × 3 "
                                          r"processes \(= 48\)"):
        resolve_batching(TrainingConfig(batch_size=16, global_batch_size=128), 3)
    with pytest.raises(ConfigError, match="grad_accum 4 contradicts"):
        resolve_batching(TrainingConfig(batch_size=16, global_batch_size=128, grad_accum=4), 4)


def test_the_cli_refuses_a_non_dividing_global_batch_and_writes_nothing(tmp_path, cache_env, capsys):
    out = tmp_path / "run"
    code = main(["run", str(SMOKE), "--output", str(out), "--set", "training.batch_size=16",
                 "--set", "training.global_batch_size=40", "--set", "trackers=[]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "training.global_batch_size 40 is not divisible by training.batch_size 16 × 1 process (= 16)" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_micro_batches_are_the_same_for_any_number_of_processes():
    gb = list(range(11))  # 6 micro-batches of 2 (the last has one sample)
    one = micro_batches(gb, 2, 0, 1)
    assert one == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10]]
    for world in (2, 4, 8):
        per_rank = [micro_batches(gb, 2, r, world) for r in range(world)]
        assert {len(p) for p in per_rank} == {math.ceil(6 / world)}  # every process the same number of steps
        real = [m for p in per_rank for m in p if m is not None]
        assert sorted(real) == sorted(one)  # the same micro-batches, each once
    assert micro_batches(gb, 2, 3, 4) == [[6, 7], None]  # a zero-weight step where the micro-batches run out


def test_a_shared_pass_gives_each_batch_to_one_process():
    """``iter_batches(shard=True)`` (SMoE-DSAL's mean-DSAL pass): process r of P gets batches r, r + P, ... of the
    one-process order, so the P shares are that order's batches, each once; without ``shard`` every process gets
    every batch."""
    from types import SimpleNamespace

    from dymoe.runner.trainer import TaskTrainer

    def trainer(rank: int, world: int) -> TaskTrainer:
        t = TaskTrainer.__new__(TaskTrainer)
        t.samples, t.cfg = list(range(23)), SimpleNamespace(batch_size=4)
        t.acc = SimpleNamespace(process_index=rank, num_processes=world, device=torch.device("cpu"))
        t.collator = lambda rows: {"ids": torch.tensor(rows)}
        return t

    def ids(it) -> list[list[int]]:
        return [b["ids"].tolist() for b in it]

    one = ids(trainer(0, 1).iter_batches(5, seed=3))
    assert [len(b) for b in one] == [4] * 5 and len({i for b in one for i in b}) == 20  # 5 batches, no repeat
    assert ids(trainer(0, 1).iter_batches(5, seed=3, shard=True)) == one
    for world in (2, 3, 8):
        shares = [ids(trainer(r, world).iter_batches(5, seed=3, shard=True)) for r in range(world)]
        assert shares == [one[r::world] for r in range(world)]
        assert ids(trainer(world - 1, world).iter_batches(5, seed=3)) == one


def test_plan_counts_the_partial_last_global_batch_as_a_step():
    plan = plan_batches([1] * 10, 4, 1.0, seed=0, group_by_length=False)
    assert [len(b) for b in plan] == [4, 4, 2] and sorted(i for b in plan for i in b) == list(range(10))


# --------------------------------------------------------------------------- the loop against an oracle
def _setup(tmp_path: Path, name: str, *overrides: str) -> ContinualRun:
    cfg = load_config(SMOKE, ["benchmark.order=[ScienceQA]", "benchmark.max_train_samples=10", "trackers=[]",
                              "training.warmup_ratio=0.4", "training.max_grad_norm=0.5", *overrides])
    run = ContinualRun(cfg, tmp_path / name)
    run.setup()
    return run


def _oracle(run: ContinualRun, samples: list, plan: list[list[int]], per_device: int) -> list[float]:
    """Plain loop: per global batch, Σ over micro-batches of (token-mean loss × its share of the batch's answer
    tokens), clip, AdamW, schedule stepped once. Returns the learning rate of every step."""
    cfg, model, adapter, method = run.cfg.training, run.model, run.adapter, run.method
    params = adapter.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler(cfg.schedule, opt, num_warmup_steps=math.ceil(cfg.warmup_ratio * len(plan)),
                          num_training_steps=len(plan))
    model.train()
    lrs = []
    for gb in plan:
        micro = [run.collator([samples[i] for i in gb[k : k + per_device]]) for k in range(0, len(gb), per_device)]
        total = sum(answer_tokens(m) for m in micro)
        for m in micro:
            ctx = adapter.context
            ctx.policy, ctx.group_mask = method.routing_policy("train"), None
            (model(**m).loss * (answer_tokens(m) / total)).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return lrs


@pytest.mark.parametrize("method", ["lora", "incmoelora"])
def test_accumulated_steps_equal_the_plain_loop_including_the_partial_last_group(method, tmp_path, cache_env,
                                                                                 capsys):
    # 10 samples, global batch 6 of micro-batches of 2: steps of 3 + 2 micro-batches (the last group is partial)
    over = [f"method.name={method}", "training.batch_size=2", "training.global_batch_size=6"]
    run = _setup(tmp_path, "a", *over)
    # the resolved layout: the first line the run prints, and env.json
    assert capsys.readouterr().err.splitlines()[0] == (
        "training: global batch 6 = 2 per device × 3 accumulation steps × 1 process")
    assert json.loads((tmp_path / "a" / "env.json").read_text())["batching"] == {
        "global_batch_size": 6, "per_device_batch_size": 2, "grad_accum": 3, "num_processes": 1}
    ref = _setup(tmp_path, "b", *over)
    task = ref.tasks[0]
    samples = run.train_set(task)
    for r in (run, ref):
        torch.manual_seed(0)
        r.method.before_task(TaskInfo(0, task.name, 1))
    assert run.trainer.batching.grad_accum == 3
    plan = run.trainer.plan(samples, seed=0)
    assert [len(b) for b in plan] == [6, 4]

    after: list[dict] = []

    def snapshot(step, total):
        after.append({n: p.detach().clone() for n, p in run.adapter.named_tensors()})

    result = run.trainer.train(TaskInfo(0, task.name, 1), samples, seed=0, on_step=snapshot)
    lrs = _oracle(ref, samples, plan, 2)
    assert result.steps == 2 and result.samples == 10
    mine, oracle = dict(run.adapter.named_tensors()), dict(ref.adapter.named_tensors())
    for key in mine:
        torch.testing.assert_close(mine[key], oracle[key], atol=1e-6, rtol=1e-5, msg=key)
    # the partial last group was applied: it changed the weights
    assert any(not torch.equal(after[0][k], after[1][k]) for k in after[0])
    # no gradient survives the task end (trainable and frozen tensors alike)
    assert all(p.grad is None for p in run.model.parameters())
    # the step log: one row per optimizer step with the rate that step used
    rows = [json.loads(x) for x in (tmp_path / "a" / "train_steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and [r["lr"] for r in rows] == pytest.approx(lrs)
    assert [r["samples"] for r in rows] == [6, 4]


def test_one_process_without_accumulation_is_the_plain_step(tmp_path, cache_env):
    """Weights of exactly 1: the step is ``(loss + terms).backward()``, bit for bit (the golden runs rely on it)."""
    over = ["method.name=dymoe", "training.batch_size=5"]
    run, ref = _setup(tmp_path, "a", *over), _setup(tmp_path, "b", *over)
    task = ref.tasks[0]
    samples = run.train_set(task)
    for r in (run, ref):
        torch.manual_seed(0)
        r.method.before_task(TaskInfo(0, task.name, 1))
    plan = run.trainer.plan(samples, seed=0)
    run.trainer.train(TaskInfo(0, task.name, 1), samples, seed=0)
    cfg, model, adapter, method = ref.cfg.training, ref.model, ref.adapter, ref.method
    params = adapter.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler("cosine", opt, num_warmup_steps=math.ceil(cfg.warmup_ratio * len(plan)),
                          num_training_steps=len(plan))
    model.train()
    from dymoe.runner.trainer import forward_loss

    for step, gb in enumerate(plan):
        loss, _, _ = forward_loss(model, adapter, method, ref.collator([samples[i] for i in gb]),
                                  StepInfo(step, len(plan)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    for (k, a), (_, b) in zip(run.adapter.named_tensors(), adapter.named_tensors()):
        assert torch.equal(a, b), k


def test_a_method_owned_module_is_trained_moved_and_saved(tmp_path, cache_env):
    from dymoe.injection.state import load_method_state

    run = _setup(tmp_path, "a", "method.name=incmoelora", "training.batch_size=5")
    proj = run.method.register_module("proj", torch.nn.Linear(4, 1))
    assert run.model.dymoe_method.proj is proj  # inside the model: DDP / ZeRO see it
    moved = copy.deepcopy(run.model).to(torch.float64)
    assert moved.dymoe_method.proj.weight.dtype == torch.float64
    assert run.method.extra_parameters() == [proj.weight, proj.bias]
    state = run.method.checkpoint_state()
    assert set(state) == {"module.proj.weight", "module.proj.bias"}
    fresh = type(run.method)()
    fresh.register_module("proj", torch.nn.Linear(4, 1))
    fresh.load_checkpoint_state(state)
    assert torch.equal(fresh.owned_modules["proj"].weight, proj.weight)
    with pytest.raises(ValueError, match="do not match"):
        type(run.method)().load_checkpoint_state(state)  # no module of that name registered
    # through the runner: its gradient reaches the optimizer (the loss term below) and the checkpoint holds it
    before = proj.weight.detach().clone()
    run.method.loss_terms = lambda batch, outputs, step: {"proj": proj(torch.ones(1, 4)).pow(2).sum()}
    k = 0
    info = TaskInfo(k, run.tasks[0].name, 1)
    run.train_task(k, run.tasks[0], info)
    assert not torch.equal(proj.weight, before) and proj.weight.grad is None
    saved = load_method_state(run.dir.checkpoint(1, run.tasks[0].name))
    assert torch.equal(saved["module.proj.weight"], proj.weight.detach())
