"""Evaluation generation: batched == one-by-one on the tiny LLaVA, order, prompt/EOS cut, sharding, scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from PIL import Image
from torch import nn

from dymoe.data.coin import TestSample as CoinTestSample  # aliased: pytest would try to collect Test*
from dymoe.data.collate import build_generation_batch
from dymoe.data.tasks import TaskSpec
from dymoe.errors import ConfigError, DymoeError
from dymoe.eval.generate import evaluate_task, generate_predictions, shard_indices


@pytest.fixture(scope="module")
def backbone(tiny_llava_dir):
    from dymoe.models.llava import load_backbone

    return load_backbone(tiny_llava_dir)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[CoinTestSample]:
    root = tmp_path_factory.mktemp("gen_images")
    paths = []
    for k, (size, color) in enumerate([((20, 12), (255, 0, 0)), ((16, 16), (0, 90, 200)), ((9, 30), (10, 200, 10))]):
        paths.append(root / f"im{k}.png")
        Image.new("RGB", size, color).save(paths[-1])
    # mixed image / text-only, with prompt lengths that the length sort reorders
    return [
        CoinTestSample("q0", paths[0], "What colour is it?", {"answer": "red"}),
        CoinTestSample(1, None, "Name a long thing with many words in it, please", {"answer": "x"}),
        CoinTestSample("q2", paths[1], "Hi", {"answer": "blue"}),
        CoinTestSample(3, None, "Yes?", {"answer": "yes"}),
        CoinTestSample("q4", paths[2], "Which shape is on the left side of the picture?", {"answer": "box"}),
    ]


def _one_by_one(model, processor, sample, max_new_tokens) -> str:
    """Reference: a single unpadded prompt, plain ``generate``, decode up to the first EOS."""
    batch = build_generation_batch(processor, [sample], max_length=2048)
    out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=processor.tokenizer.pad_token_id)
    new = out[0, batch["input_ids"].shape[1]:].tolist()
    eos = processor.tokenizer.eos_token_id
    new = new[: new.index(eos)] if eos in new else new
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_batched_equals_one_by_one_in_the_original_order(backbone, samples):
    model, processor = backbone
    preds = generate_predictions(model, processor, samples, batch_size=3, max_new_tokens=8)
    assert [p["question_id"] for p in preds] == ["q0", 1, "q2", 3, "q4"]
    assert [p["prompt"] for p in preds] == [s.prompt for s in samples]
    expected = [_one_by_one(model, processor, s, 8) for s in samples]
    assert [p["text"] for p in preds] == expected
    assert len(set(expected)) > 1  # the samples really get different answers, so a mix-up would show


def test_single_process_accelerator_gives_the_same_predictions(backbone, samples):
    model, processor = backbone
    plain = generate_predictions(model, processor, samples, batch_size=2, max_new_tokens=6)
    acc = FakeAccelerator(1, 0, barrier=None, store={})
    assert generate_predictions(model, processor, samples, batch_size=4, max_new_tokens=6, accelerator=acc) == plain
    assert acc.gather_calls == 0  # nothing to gather with one process


# --------------------------------------------------------------------------- a scripted model (exact texts)


class EchoLengthModel(nn.Module):
    """Answers each row with ``" len {L}"`` (L = its unpadded prompt length) + EOS + junk, like a finished row."""

    def __init__(self, tokenizer, answer=lambda n: f" len {n}"):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.tok = tokenizer
        self.answer = answer
        self.calls: list[int] = []
        self.modes: list[bool] = []

    def generate(self, input_ids, attention_mask, pixel_values=None, max_new_tokens=32, **kw):
        assert kw["do_sample"] is False and kw["use_cache"] is True
        self.calls.append(input_ids.shape[0])
        self.modes.append(self.training)
        rows = []
        for b in range(input_ids.shape[0]):
            n = int(attention_mask[b].sum())
            assert attention_mask[b, -1] == 1  # left padding: every prompt ends at the right edge
            ids = self.tok(self.answer(n), add_special_tokens=False)["input_ids"]
            ids = ids + [self.tok.eos_token_id] + self.tok(" junk after eos", add_special_tokens=False)["input_ids"]
            rows.append(ids)
        width = max(len(r) for r in rows)
        new = torch.full((len(rows), width), self.tok.pad_token_id, dtype=torch.long)
        for b, r in enumerate(rows):
            new[b, : len(r)] = torch.tensor(r)
        return torch.cat([input_ids, new], dim=1)  # [B, T + new]


def _lengths(processor, samples) -> list[int]:
    return [build_generation_batch(processor, [s], max_length=2048)["input_ids"].shape[1] for s in samples]


def test_text_is_only_the_new_tokens_cut_at_eos(backbone, samples):
    _, processor = backbone
    model = EchoLengthModel(processor.tokenizer)
    preds = generate_predictions(model, processor, samples, batch_size=2)
    assert [p["text"] for p in preds] == [f"len {n}" for n in _lengths(processor, samples)]
    assert model.calls == [2, 2, 1]
    assert model.modes == [False, False, False] and model.training  # eval mode while generating, then restored


def test_batches_go_longest_first(backbone, samples):
    _, processor = backbone
    seen: list[int] = []
    model = EchoLengthModel(processor.tokenizer, answer=lambda n: seen.append(n) or " ok")
    generate_predictions(model, processor, samples, batch_size=1)
    assert seen == sorted(_lengths(processor, samples), reverse=True)


# --------------------------------------------------------------------------- sharding


class FakeAccelerator:
    """The part of ``accelerate.Accelerator`` generation uses; ``gather_object`` joins threads at a barrier."""

    def __init__(self, num_processes, process_index, barrier, store, reverse_gather=False):
        self.num_processes = num_processes
        self.process_index = process_index
        self.is_main_process = process_index == 0
        self.barrier = barrier
        self.store = store
        self.reverse_gather = reverse_gather
        self.gather_calls = 0

    def gather_object(self, obj):
        self.gather_calls += 1
        self.store[self.process_index] = list(obj)
        self.barrier.wait()
        ranks = sorted(self.store, reverse=self.reverse_gather)
        return [x for r in ranks for x in self.store[r]]


@pytest.mark.parametrize("num_processes,reverse", [(2, False), (3, True), (7, False)])
def test_sharded_generation_reassembles_in_order_on_every_process(backbone, samples, num_processes, reverse):
    _, processor = backbone
    barrier = threading.Barrier(num_processes)
    store: dict[int, list] = {}
    results: dict[int, list] = {}
    calls: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(rank):
        try:
            model = EchoLengthModel(processor.tokenizer)
            acc = FakeAccelerator(num_processes, rank, barrier, store, reverse)
            results[rank] = generate_predictions(model, processor, samples, batch_size=2, accelerator=acc)
            calls[rank] = model.calls
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(num_processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    expected = [
        {"question_id": s.question_id, "prompt": s.prompt, "text": f"len {n}"}
        for s, n in zip(samples, _lengths(processor, samples))
    ]
    for rank in range(num_processes):
        assert results[rank] == expected
        # each process generated only its strided shard
        assert sum(calls[rank]) == len(shard_indices(len(samples), num_processes, rank))


def test_shard_indices_partition():
    assert shard_indices(5, 2, 0) == [0, 2, 4]
    assert shard_indices(5, 2, 1) == [1, 3]
    assert shard_indices(2, 3, 2) == []
    shards = [shard_indices(11, 4, r) for r in range(4)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    with pytest.raises(ConfigError):
        shard_indices(3, 2, 2)


def test_bad_arguments(backbone, samples):
    model, processor = backbone
    with pytest.raises(ConfigError, match="batch_size"):
        generate_predictions(model, processor, samples, batch_size=0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_predictions(model, processor, samples, max_new_tokens=0)
    assert generate_predictions(model, processor, []) == []


# --------------------------------------------------------------------------- evaluate_task


def test_evaluate_task_scores_the_generated_text(backbone, samples, tmp_path):
    _, processor = backbone
    lengths = _lengths(processor, samples)
    refs = [dict(s.reference) for s in samples]
    # VQAv2 scorer: upper-cased exact match with "answer"; make 3 of the 5 right
    for k in (0, 2, 3):
        refs[k]["answer"] = f"LEN {lengths[k]}"
    qs = [CoinTestSample(s.question_id, s.image, s.prompt, {"question_id": s.question_id, **r})
          for s, r in zip(samples, refs)]
    task = TaskSpec("VQAv2", tmp_path / "train.json", tmp_path / "test.json", tmp_path, scorer="vqav2")
    result, preds = evaluate_task(EchoLengthModel(processor.tokenizer), processor, task, qs, batch_size=4)
    assert result.n == 5 and result.correct == 3.0
    assert result.accuracy == pytest.approx(60.0)
    assert result.details["per_sample"] == {"q0": 1.0, "1": 0.0, "q2": 1.0, "3": 1.0, "q4": 0.0}
    assert [p["text"] for p in preds] == [f"len {n}" for n in lengths]
    # an explicit scorer_name wins over the task's; an unknown one names the known scorers
    strict, _ = evaluate_task(EchoLengthModel(processor.tokenizer), processor, task, qs, scorer_name="vqav2-strict")
    assert strict.correct == 3.0
    with pytest.raises(DymoeError, match="known"):
        evaluate_task(EchoLengthModel(processor.tokenizer), processor, task, qs, scorer_name="nope")



# --------------------------------------------------------------------------- real 2-process gloo run (opt-in)

_WORKER = '''
import json, sys
from pathlib import Path
import torch
from accelerate import Accelerator
from dymoe.data.coin import TestSample
from dymoe.eval.generate import generate_predictions
from dymoe.models.llava import load_backbone

torch.set_num_threads(1)
model_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
acc = Accelerator(cpu=True)
model, processor = load_backbone(model_dir)
rows = json.loads((work / "samples.json").read_text())
samples = [TestSample(r["question_id"], Path(r["image"]) if r["image"] else None, r["prompt"], {}) for r in rows]
preds = generate_predictions(model, processor, samples, batch_size=2, max_new_tokens=6, accelerator=acc)
(work / f"rank{acc.process_index}.json").write_text(json.dumps({"n": acc.num_processes, "preds": preds}))
'''


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DYMOE_SLOW_TESTS"), reason="~20 s: set DYMOE_SLOW_TESTS=1 to run")
def test_two_process_gloo_run_matches_one_process(backbone, samples, tiny_llava_dir, tmp_path):
    model, processor = backbone
    rows = [{"question_id": s.question_id, "image": str(s.image) if s.image else None, "prompt": s.prompt}
            for s in samples]
    (tmp_path / "samples.json").write_text(json.dumps(rows))
    (tmp_path / "worker.py").write_text(_WORKER)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "worker.py"), str(tiny_llava_dir), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = generate_predictions(model, processor, samples, batch_size=5, max_new_tokens=6)
    expected = json.loads(json.dumps(expected))  # question ids / texts as JSON gives them back
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["n"] == 2
        assert got["preds"] == expected
