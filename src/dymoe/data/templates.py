"""Instruction templates of CoIN (DyMoE supplement Table 16) and the Origin → Diverse / 10Type rewrite.

Each CoIN prompt ends with its task's *Origin* instruction sentence (e.g. "Answer the question using a single word
or phrase."). ``diverse`` replaces it with the task's single Diverse template, ``10type`` with one template drawn
per sample from the task's list with a seeded RNG.

Transcription notes (deviations from the printed table, resolved here):

* The VQAv2 10Type cell prints two templates in one paragraph ("... a short phrase Use a single word or phrase
  ..."); they are split into two, giving 11 templates like every other row.
* The OCR-VQA 10Type cell repeats the ScienceQA option-letter templates verbatim (a copy error: OCR-VQA answers
  are titles/authors/genres, not letters). OCR-VQA 10Type uses the TextVQA 10Type list instead (the same
  short-answer, text-reading format).
"""

from __future__ import annotations

import random
import re

from dymoe.errors import ConfigError

_SHORT = "Answer the question using a single word or phrase"
_SQA = "Answer with the option's letter from the given choices directly"
_SQA_10 = [
    "Answer with the option's letter from the given choices directly",
    "Select the correct answer from the given choices and respond with the letter of the chosen option",
    "Determine the correct option from the provided choices and reply with its corresponding letter",
    "Pick the correct answer from the listed options and provide the letter of the selected option",
    "Identify the correct choice from the options below and respond with the letter of the correct option",
    "From the given choices, choose the correct answer and respond with the letter of that choice",
    "Choose the right answer from the options and respond with its letter",
    "Select the correct answer from the provided options and reply with the letter associated with it",
    "From the given choices, select the correct answer and reply with the letter of the chosen option",
    "Identify the correct option from the choices provided and respond with the letter of the correct option",
    "From the given choices, pick the correct answer and respond by indicating the letter of the correct option",
]
_TEXTVQA_10 = [
    "Answer the question with just one word or a brief phrase",
    "Use one word or a concise phrase to respond to the question",
    "Answer using only one word or a short, descriptive phrase",
    "Provide your answer in the form of a single word or a brief phrase",
    "Use a single word or a short phrase to respond to the question",
    "Summarize your response in one word or a concise phrase",
    "Respond to the question using a single word or a brief phrase",
    "Provide your answer in one word or a short, descriptive phrase",
    "Answer the question with a single word or a brief, descriptive phrase",
    "Capture the essence of your response in one word or a short phrase",
    "Capture the essence of your response in a single word or a concise phrase",
]

# canonical key → {"origin": str, "diverse": str, "10type": [str, ...]} (sentences without the final period)
TEMPLATES: dict[str, dict] = {
    "SQA": {"origin": _SQA, "diverse": _SQA, "10type": _SQA_10},
    "TextVQA": {
        "origin": _SHORT,
        "diverse": "Capture the essence of your response in a single word or a concise phrase",
        "10type": _TEXTVQA_10,
    },
    "ImageNet": {
        "origin": _SHORT,
        "diverse": "Express your answer in a single word or a short, descriptive phrase",
        "10type": [
            "Express your answer in a single word or a short, descriptive phrase",
            "Provide your answer using a single word or a brief phrase",
            "Describe the content of the image using one word or a concise phrase",
            "Respond to the question with a single word or a short, descriptive phrase",
            "Classify the image content using only one word or a brief phrase",
            "Give your answer in the form of a single word or a concise phrase",
            "Use a single word or a short phrase to categorize the image content",
            "Express your answer with one word or a short, descriptive phrase",
            "Identify the type of content in the image using one word or a concise phrase",
            "Summarize your response in a single word or a brief phrase",
            "Use one word or a short phrase to classify the content of the image",
        ],
    },
    "GQA": {
        "origin": _SHORT,
        "diverse": "Respond to the question briefly, using only one word or a phrase",
        "10type": [
            "Respond to the question with a single word or a short phrase",
            "Respond to the question using only one word or a concise phrase",
            "Answer the question with a single word or a brief phrase",
            "Respond with one word or a short phrase",
            "Provide your answer in the form of a single word or a concise phrase",
            "Respond to the question with just one word or a brief phrase",
            "Answer the question using a single word or a concise phrase",
            "Provide your response using only one word or a short phrase",
            "Respond to the question with a single word or a brief phrase",
            "Respond to the question using just one word or a concise phrase",
            "Answer the question with one word or a short phrase",
        ],
    },
    "VizWiz": {
        "origin": _SHORT,
        "diverse": "Provide a succinct response with a single word or phrase",
        "10type": [
            "Answer the question using only one word or a concise phrase",
            "Respond to the question using only one word or a concise phrase",
            "Respond to the question with a single word or a brief phrase",
            "Provide your answer using just one word or a short phrase",
            "Respond with one word or a concise phrase",
            "Answer the question with just one word or a brief phrase",
            "Use a single word or a short phrase to answer the question",
            "Provide your answer in the form of one word or a brief phrase",
            "Reply to the question using one word or a concise phrase",
            "Answer with a single word or a short phrase",
            "Use one word or a brief phrase to answer the question",
        ],
    },
    "Grounding": {
        "origin": "Please provide the bounding box coordinate of the region this sentence describes",
        "diverse": "Please provide the bounding box coordinate of the region this sentence describes",
        "10type": [
            "Identify and provide the bounding box coordinates that match the description given in this sentence",
            "Extract and provide the bounding box coordinates based on the region described in the sentence",
            "Please provide the bounding box coordinate of the region this sentence describes",
            "Find and provide the bounding box coordinates for the region mentioned in the sentence",
            "Provide the coordinates of the bounding box that correspond to the region described in the sentence",
            "Give the bounding box coordinates as described in the sentence",
            "Determine and provide the bounding box coordinates based on the description in the sentence",
            "Identify and provide the coordinates of the bounding box described in the sentence",
            "Provide the coordinates for the bounding box based on the region described in the sentence",
            "Extract and provide the coordinates for the bounding box described in the sentence",
            "Identify and give the coordinates of the bounding box as described by the sentence",
        ],
    },
    "VQAv2": {
        "origin": _SHORT,
        "diverse": _SHORT,
        "10type": [
            "Answer the question using a single word or phrase",
            "Answer the question with a single word or a brief phrase",
            "Use one word or a short phrase to respond to the question",
            "Answer the question using just one word or a concise phrase",
            "Provide your answer to the question using only one word or a brief phrase",
            "Respond to the question with a single word or a short phrase",
            "Use a single word or phrase to answer the question",
            "Provide an answer using only one word or a brief phrase",
            "Answer the question succinctly with one word or a brief phrase",
            "Answer the question with just one word or a short phrase",
            "Respond to the question using a single word or a concise phrase",
        ],
    },
    "OCRVQA": {
        "origin": _SHORT,
        "diverse": "Condense your answer for each question into a single word or concise phrase",
        "10type": _TEXTVQA_10,  # see the module docstring: the printed cell is a copy of the SQA row
    },
}

_ALIASES = {
    "scienceqa": "SQA", "sqa": "SQA",
    "textvqa": "TextVQA", "vqatext": "TextVQA",
    "imagenet": "ImageNet", "imgnet": "ImageNet",
    "gqa": "GQA",
    "vizwiz": "VizWiz",
    "grounding": "Grounding", "ref": "Grounding", "refcoco": "Grounding",
    "vqav2": "VQAv2", "vqa2": "VQAv2",
    "ocrvqa": "OCRVQA", "vqaocr": "OCRVQA",
}


def canonical_task(name: str) -> str | None:
    """Table 16 row of a task name (case, spaces, ``-``/``_`` ignored): ``"OCR-VQA"`` → ``"OCRVQA"``; else None."""
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def _row(task_name: str) -> dict:
    key = canonical_task(task_name)
    if key is None:
        raise ConfigError(
            f"task {task_name!r} has no instruction templates; known tasks: {sorted(TEMPLATES)} (and aliases)"
        )
    return TEMPLATES[key]


def instruction_for(task_name: str, instruction_type: str, rng: random.Random) -> str:
    """The instruction sentence (no final period) for a task and type; ``10type`` draws one with ``rng``."""
    row = _row(task_name)
    if instruction_type == "10type":
        return rng.choice(row["10type"])
    if instruction_type not in ("origin", "diverse"):
        raise ConfigError(f"instruction_type {instruction_type!r} is not one of origin, diverse, 10type")
    return row[instruction_type]


def rewrite_prompt(prompt: str, task_name: str, instruction_type: str, rng: random.Random) -> str:
    """Replace the Origin instruction sentence at the end of ``prompt`` with the ``instruction_type`` template.

    ``origin`` returns the prompt unchanged (no RNG draw). A prompt that does not end with the task's Origin
    sentence (with or without its period), e.g. one read from CoIN's own ``Instructions_Diverse`` files, is
    returned unchanged and draws nothing from ``rng``.
    """
    if instruction_type == "origin":
        return prompt
    origin = _row(task_name)["origin"]
    body = prompt.rstrip()
    for tail in (origin + ".", origin):
        if body.endswith(tail):
            new = instruction_for(task_name, instruction_type, rng)
            return body[: len(body) - len(tail)] + new + ("." if tail.endswith(".") else "")
    return prompt
