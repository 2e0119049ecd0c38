"""``python tests/methods/dmole/killrun.py run CONFIG ...``: the dymoe CLI, killed with SIGKILL at a chosen moment of
D-MoLE's task 2 (env ``DYMOE_TEST_DMOLE_KILL``: ``proxy:<marker>`` right after the zero-cost proxy, before the
autoencoder; ``grow:<marker>`` after the planning phase was saved, before the task's experts are added and
trained). The marker file is created first, so the resumed run does not kill itself again."""

import os
import signal
import sys
from pathlib import Path

import torch

from dymoe.cli.main import main
from dymoe.methods.dmole.method import DMoLE


def _kill_once(marker: str) -> None:
    if not Path(marker).exists():
        Path(marker).write_text("killed\n")
        os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    kind, _, marker = spec.partition(":")
    if kind == "proxy":
        original = DMoLE._proxy

        def proxy(self, planner):
            out = original(self, planner)
            if planner.task.index == 1:
                _kill_once(marker)
            return out

        DMoLE._proxy = proxy
    elif kind == "grow":
        original_before = DMoLE.before_task

        def before_task(self, task):
            if task.index == 1:
                _kill_once(marker)
            return original_before(self, task)

        DMoLE.before_task = before_task


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in filter(None, os.environ.get("DYMOE_TEST_DMOLE_KILL", "").split(",")):
        install(spec)
    sys.exit(main(sys.argv[1:]))
