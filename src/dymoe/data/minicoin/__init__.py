"""mini-CoIN: a procedurally generated miniature of the CoIN benchmark that runs on a CPU in minutes.

Eight tasks, one per CoIN task, in CoIN's on-disk layout (LLaVA conversation JSON for training, CoIN test JSON,
PNG images, the ScienceQA/TextVQA/GQA annotation files), so the same loaders and scorers run on it. All tasks
draw from one visual world (:mod:`.world`: 8 colours, 5 shapes, 3 patterns, a 5×7 block font) and share answer
words (colours answer VQAv2, GQA, VizWiz and are part of ImageNet class names; yes/no appear in VQAv2, GQA and
OCR-VQA), while their answer styles conflict (letter, word, class phrase, box, capitalised "Yes"), so sequential
fine-tuning forgets.

Images are 64×64, 64×48 or 48×64 and stay readable at 32×32: big solid shapes, 1-4 objects, glyphs 3 px per font
pixel.

==========  ===========  ==========  ====================================
scale       train/task   test/task   use
==========  ===========  ==========  ====================================
small       160          40          tests and ``--quick`` runs (a few seconds)
default     600          100         the demo (well under a minute)
large       3000         300         closer-to-real runs
==========  ===========  ==========  ====================================

>>> from dymoe.data.minicoin import generate, verify
>>> yaml_path = generate("data/mini-coin", scale="small", seed=0)
>>> verify("data/mini-coin")
[]
"""

from __future__ import annotations

from dymoe.data.minicoin.tasks import TASK_NAMES
from dymoe.data.minicoin.writer import SCALES, generate, verify

__all__ = ["SCALES", "TASK_NAMES", "generate", "verify"]
