"""What a mini-CoIN task generator returns, and the instruction texts of CoIN's "Origin" instruction type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

#: CoIN Instructions_Original texts (DyMoE supplement Table 16, "Original" column), with LLaVA's final period
SQA_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER = "Answer the question using a single word or phrase."
GROUNDING_INSTRUCTION = "Please provide the bounding box coordinate of the region this sentence describes."


@dataclass
class Sample:
    """One generated example.

    ``turns`` are ``(prompt, answer)`` pairs; the prompt is the full text without the ``<image>`` token (the writer
    adds it to the first human turn). Test rows use the first turn only. ``truth`` holds the extra ground-truth
    fields of a test row (``answers``, ``answer_bbox`` + ``size``); ``meta`` holds generator internals (scene
    objects, raw question, choices) that side files and tests use and that are never written to the rows.
    """

    image: Image.Image | None
    turns: list[tuple[str, str]]
    truth: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The answer of the first turn."""
        return self.turns[0][1]


def short_prompt(question: str) -> str:
    """``question`` followed by CoIN's single-word-or-phrase instruction."""
    return f"{question}\n{SHORT_ANSWER}"
