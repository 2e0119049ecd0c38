"""``python tests/methods/cmoe/killrun.py run CONFIG ...``: the dymoe CLI, killed with SIGKILL at a chosen moment of
CMoE's task 2 (env ``DYMOE_TEST_CMOE_KILL``: ``probe:<marker>`` right after the probes trained, before Act is
measured; ``train:<n>:<marker>`` at the n-th training step of task 2). The marker file is created first, so the
resumed run does not kill itself again."""

import os
import signal
import sys
from pathlib import Path

import torch

from dymoe.cli.main import main
from dymoe.methods.cmoe.method import CMoE


def _kill_once(marker: str) -> None:
    if not Path(marker).exists():
        Path(marker).write_text("killed\n")
        os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    kind, _, rest = spec.partition(":")
    if kind == "probe":
        original = CMoE._measure_act

        def measure(self, planner, indices):
            _kill_once(rest)
            return original(self, planner, indices)

        CMoE._measure_act = measure
    elif kind == "train":
        n, marker = rest.split(":", 1)
        original_loss = CMoE.loss_terms
        calls = {"n": 0}

        def loss_terms(self, batch, outputs, step):
            if self.phase == "train" and self.primitives.shape[0] >= 2:
                calls["n"] += 1
                if calls["n"] == int(n):
                    _kill_once(marker)
            return original_loss(self, batch, outputs, step)

        CMoE.loss_terms = loss_terms


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in filter(None, os.environ.get("DYMOE_TEST_CMOE_KILL", "").split(",")):
        install(spec)
    sys.exit(main(sys.argv[1:]))
