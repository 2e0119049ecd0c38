"""ScienceQA-like: multiple choice with lettered options, about half with an image; the answer is a letter.

Text-only questions test facts of the mini world (sides of shapes, paint mixing, what a thing looks like); image
questions ask which property two objects share or which object is biggest. The prompt follows LLaVA-1.5's
ScienceQA format used by CoIN: question, optional ``Context:`` line, ``A. ...`` option lines, then the instruction.
"""

from __future__ import annotations

import numpy as np

from dymoe.data.minicoin.tasks.base import SQA_INSTRUCTION, Sample
from dymoe.data.minicoin.world import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SQUARE,
    SceneObject,
    grid_boxes,
    pick,
    render_scene,
    sample_without,
)

LETTERS = "ABCDE"
IMAGE_RATE = 0.5  # ScienceQA: 6,218 of 12,726 training questions have an image
SIDES = {"triangle": "3", "square": "4", "diamond": "4"}
MIXES = {("red", "yellow"): "orange", ("blue", "yellow"): "green", ("red", "blue"): "purple"}
PRIMARY, SECONDARY = ("red", "blue", "yellow"), ("orange", "green", "purple")
LOOKS_LIKE = {
    "wheel": "circle", "coin": "circle", "window": "square", "slice of pizza": "triangle",
    "kite": "diamond", "plus sign": "cross",
}  # fmt: skip


def format_prompt(question: str, context: str, choices: list[str]) -> str:
    """``question\\nContext: ...\\nA. x\\nB. y\\n<instruction>`` (the Context line only when there is one)."""
    lines = [question] + ([f"Context: {context}"] if context else [])
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines + [SQA_INSTRUCTION])


def _text_question(rng: np.random.Generator) -> tuple[str, str, str, list[str]]:
    """(question, context, answer, distractors) of a text-only question."""
    kind = pick(rng, ("sides", "mix", "corners", "looks", "primary"))
    if kind == "sides":
        shape = pick(rng, tuple(SIDES))
        ans = SIDES[shape]
        return (
            f"How many sides does a {shape} have?",
            "",
            ans,
            sample_without(rng, ("3", "4", "5", "6"), 2, [ans]),
        )
    if kind == "mix":
        (a, b), ans = pick(rng, list(MIXES.items()))
        if rng.random() < 0.5:
            a, b = b, a
        q = f"Which color do you get when you mix {a} paint and {b} paint?"
        return q, "Select the best answer.", ans, sample_without(rng, COLOURS, 2, [a, b, ans])
    if kind == "corners":
        return "Which shape has no corners?", "", "circle", sample_without(rng, SHAPES, 2, ["circle"])
    if kind == "looks":
        thing = pick(rng, tuple(LOOKS_LIKE))
        ans = LOOKS_LIKE[thing]
        q = f"Which shape does a {thing} look like?"
        return q, "Select the best answer.", ans, sample_without(rng, SHAPES, 2, [ans])
    ans = pick(rng, PRIMARY)
    return "Which color is a primary color?", "", ans, sample_without(rng, SECONDARY, 2)


def _image_question(rng: np.random.Generator) -> tuple[str, str, str, list[str], list[SceneObject]]:
    """(question, context, answer, distractors, objects) of a question about a rendered scene."""
    if rng.random() < 0.5:
        # two objects sharing exactly one property: their colour or their shape
        boxes = grid_boxes(rng, SQUARE, 2, min_side=16, max_side=28)
        c1, c2 = sample_without(rng, COLOURS, 2)
        s1, s2 = sample_without(rng, SHAPES, 2)
        if rng.random() < 0.5:
            objs = [SceneObject(s1, c1, boxes[0]), SceneObject(s2, c1, boxes[1])]
            ans, distractors = c1, [pick(rng, (s1, s2)), pick(rng, [c for c in COLOURS if c != c1])]
        else:
            objs = [SceneObject(s1, c1, boxes[0]), SceneObject(s1, c2, boxes[1])]
            ans, distractors = s1, [pick(rng, (c1, c2)), pick(rng, [s for s in SHAPES if s != s1])]
        return (
            "Which property do these two objects have in common?",
            "Select the best answer.",
            ans,
            distractors,
            objs,
        )
    # 2-3 objects of clearly different sizes (each side at least 1.35x the next smaller one), one per grid cell
    n = int(rng.integers(2, 4))
    sides = [int(rng.integers(8, 13 if n == 3 else 21))]
    for _ in range(n - 1):
        lo = int(np.ceil(sides[-1] * 1.35))
        sides.append(int(rng.integers(lo, max(lo, 22 if len(sides) < n - 1 else 30) + 1)))
    sides.reverse()  # biggest first
    shapes = sample_without(rng, SHAPES, n)
    objs = []
    for shape, side, cell in zip(shapes, sides, rng.permutation(4)):
        x0 = int(cell % 2) * 32 + int(rng.integers(0, 32 - side + 1))
        y0 = int(cell // 2) * 32 + int(rng.integers(0, 32 - side + 1))
        objs.append(SceneObject(shape, pick(rng, COLOURS), (x0, y0, x0 + side, y0 + side)))
    return "Which shape is the biggest?", "Look at the picture.", shapes[0], shapes[1:], objs


def make_sample(rng: np.random.Generator, split: str) -> Sample:
    """One multiple-choice question, with an image about half the time."""
    objs: list[SceneObject] = []
    if rng.random() < IMAGE_RATE:
        question, context, ans, distractors, objs = _image_question(rng)
    else:
        question, context, ans, distractors = _text_question(rng)
    n_choices = int(rng.integers(2, len(distractors) + 2))
    choices = [ans] + list(distractors[: n_choices - 1])
    choices = [choices[int(i)] for i in rng.permutation(len(choices))]
    answer_idx = choices.index(ans)
    img = render_scene(SQUARE, pick(rng, BACKGROUNDS), objs) if objs else None
    return Sample(
        img,
        [(format_prompt(question, context, choices), LETTERS[answer_idx])],
        meta={
            "question": question,
            "context": context,
            "choices": choices,
            "answer_idx": answer_idx,
            "objects": objs,
        },
    )
