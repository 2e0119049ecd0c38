"""The eight mini-CoIN task generators, one per CoIN task, registered in CoIN's origin order.

Each generator is ``make_sample(rng, split) -> Sample`` (``split`` is ``"train"`` or ``"test"``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dymoe.data.minicoin.tasks import gqa, grounding, imagenet, ocrvqa, sqa, textvqa, vizwiz, vqav2
from dymoe.data.minicoin.tasks.base import Sample
from dymoe.registry import Registry

TaskGenerator = Callable[[np.random.Generator, str], Sample]

TASKS: Registry[TaskGenerator] = Registry("mini-CoIN task")
TASKS.add("ScienceQA", sqa.make_sample)
TASKS.add("TextVQA", textvqa.make_sample)
TASKS.add("ImageNet", imagenet.make_sample)
TASKS.add("GQA", gqa.make_sample)
TASKS.add("VizWiz", vizwiz.make_sample)
TASKS.add("Grounding", grounding.make_sample)
TASKS.add("VQAv2", vqav2.make_sample)
TASKS.add("OCRVQA", ocrvqa.make_sample)

#: CoIN's origin order (the registry lists names alphabetically)
TASK_NAMES: tuple[str, ...] = (
    "ScienceQA",
    "TextVQA",
    "ImageNet",
    "GQA",
    "VizWiz",
    "Grounding",
    "VQAv2",
    "OCRVQA",
)

__all__ = ["TASKS", "TASK_NAMES", "Sample", "TaskGenerator"]
