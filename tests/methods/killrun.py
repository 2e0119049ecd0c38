"""``python tests/methods/killrun.py run CONFIG ...``: the dymoe CLI, killed with SIGKILL at a chosen moment of a
method's task 2 (the method packages' resume tests). Env ``DYMOE_TEST_KILL``: comma-separated ``<hook>:<args>``:

- ``cmoe.probe:<marker>``: CMoE, right after the probes trained, before Act is measured;
- ``cmoe.train:<n>:<marker>``: CMoE, at the n-th training step of task 2;
- ``dmole.proxy:<marker>``: D-MoLE, right after the zero-cost proxy, before the autoencoder;
- ``dmole.grow:<marker>``: D-MoLE, after the planning phase was saved, before the task's experts are added.

The marker file is created first, so the resumed run (same env) does not kill itself again. Without the env it is
the plain CLI."""

import os
import signal
import sys
from pathlib import Path

import torch

from dymoe.cli.main import main


def _kill_once(marker: str) -> None:
    if not Path(marker).exists():
        Path(marker).write_text("killed\n")
        os.kill(os.getpid(), signal.SIGKILL)


def _cmoe_probe(marker: str) -> None:
    from dymoe.methods.cmoe.method import CMoE

    original = CMoE._measure_act

    def measure(self, planner, indices):
        _kill_once(marker)
        return original(self, planner, indices)

    CMoE._measure_act = measure


def _cmoe_train(spec: str) -> None:
    from dymoe.methods.cmoe.method import CMoE

    n, marker = spec.split(":", 1)
    original = CMoE.loss_terms
    calls = {"n": 0}

    def loss_terms(self, batch, outputs, step):
        if self.phase == "train" and self.primitives.shape[0] >= 2:
            calls["n"] += 1
            if calls["n"] == int(n):
                _kill_once(marker)
        return original(self, batch, outputs, step)

    CMoE.loss_terms = loss_terms


def _dmole_proxy(marker: str) -> None:
    from dymoe.methods.dmole.method import DMoLE

    original = DMoLE._proxy

    def proxy(self, planner):
        out = original(self, planner)
        if planner.task.index == 1:
            _kill_once(marker)
        return out

    DMoLE._proxy = proxy


def _dmole_grow(marker: str) -> None:
    from dymoe.methods.dmole.method import DMoLE

    original = DMoLE.before_task

    def before_task(self, task):
        if task.index == 1:
            _kill_once(marker)
        return original(self, task)

    DMoLE.before_task = before_task


HOOKS = {"cmoe.probe": _cmoe_probe, "cmoe.train": _cmoe_train, "dmole.proxy": _dmole_proxy, "dmole.grow": _dmole_grow}


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in filter(None, os.environ.get("DYMOE_TEST_KILL", "").split(",")):
        hook, _, args = spec.partition(":")
        HOOKS[hook](args)
    sys.exit(main(sys.argv[1:]))
