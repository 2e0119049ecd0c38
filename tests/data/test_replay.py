"""Replay selection: N per past task, uniform without replacement, deterministic by seed and task name."""

import pytest

from dymoe.data.replay import select_replay
from dymoe.errors import ConfigError


def _past():
    return {"sqa": [f"sqa-{i}" for i in range(50)], "textvqa": [f"tv-{i}" for i in range(30)], "tiny": ["t-0", "t-1"]}


def test_draws_n_per_past_task_without_replacement():
    out = select_replay(_past(), 5, seed=0)
    by_task = {name: [s for s in out if s.startswith(prefix)] for name, prefix in
               (("sqa", "sqa-"), ("textvqa", "tv-"), ("tiny", "t-"))}
    assert [len(v) for v in by_task.values()] == [5, 5, 2]  # a task with fewer samples gives all of them
    assert len(set(out)) == len(out)
    # tasks in mapping order, each task's picks in their original order
    assert out[:5] == sorted(by_task["sqa"], key=lambda s: int(s.split("-")[1]))
    assert out[5:10] == sorted(by_task["textvqa"], key=lambda s: int(s.split("-")[1]))


def test_deterministic_by_seed_and_same_buffer_for_a_task_every_time():
    past = _past()
    a = select_replay(past, 4, seed=7)
    assert select_replay(past, 4, seed=7) == a
    assert select_replay(past, 4, seed=8) != a
    # the buffer of "sqa" does not depend on which other tasks are present or their order
    only_sqa = select_replay({"sqa": past["sqa"]}, 4, seed=7)
    reordered = select_replay({"textvqa": past["textvqa"], "sqa": past["sqa"]}, 4, seed=7)
    assert only_sqa == a[:4] == reordered[4:]


def test_uniform_over_a_task():
    # each of 4 samples is drawn (n = 1) with probability 1/4: 2000 seeds give about 500 each
    counts = {k: 0 for k in "abcd"}
    for seed in range(2000):
        (s,) = select_replay({"task": list("abcd")}, 1, seed)
        counts[s] += 1
    assert all(420 < c < 580 for c in counts.values()), counts


def test_zero_and_bad_n():
    assert select_replay(_past(), 0, seed=0) == []
    assert select_replay({}, 3, seed=0) == []
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="samples_per_task"):
            select_replay(_past(), bad, seed=0)
