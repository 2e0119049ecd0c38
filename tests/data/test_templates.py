"""Table 16 templates and the Origin → Diverse / 10Type rewrite."""

from __future__ import annotations

import random

import pytest

from dymoe.data.templates import TEMPLATES, canonical_task, instruction_for, rewrite_prompt
from dymoe.errors import ConfigError

SHORT = "Answer the question using a single word or phrase"


@pytest.mark.parametrize(
    "name, key",
    [("ScienceQA", "SQA"), ("sqa", "SQA"), ("TextVQA", "TextVQA"), ("ImageNet", "ImageNet"), ("GQA", "GQA"),
     ("VizWiz", "VizWiz"), ("Grounding", "Grounding"), ("REF", "Grounding"), ("VQAv2", "VQAv2"),
     ("OCR-VQA", "OCRVQA"), ("ocrvqa", "OCRVQA"), ("MNIST", None)],
)
def test_canonical_task(name, key):
    assert canonical_task(name) == key


def test_table_shape():
    assert sorted(TEMPLATES) == sorted(["SQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"])
    for row in TEMPLATES.values():
        assert len(row["10type"]) == 11 and len(set(row["10type"])) == 11
        assert all(not t.endswith(".") for t in row["10type"])
    assert TEMPLATES["GQA"]["diverse"] == "Respond to the question briefly, using only one word or a phrase"
    assert TEMPLATES["VQAv2"]["10type"][6] == "Use a single word or phrase to answer the question"  # split cell
    assert not any("letter" in t for t in TEMPLATES["OCRVQA"]["10type"])  # printed cell is the SQA copy


def test_rewrite_origin_diverse_and_untouched():
    prompt = "What is this?\n" + SHORT + "."
    assert rewrite_prompt(prompt, "GQA", "origin", random.Random(0)) == prompt
    assert rewrite_prompt(prompt, "GQA", "diverse", random.Random(0)) == (
        "What is this?\nRespond to the question briefly, using only one word or a phrase."
    )
    # already rewritten (or custom) prompts stay as they are
    custom = "What is this?\nTell me."
    assert rewrite_prompt(custom, "GQA", "diverse", random.Random(0)) == custom
    with pytest.raises(ConfigError, match="no instruction templates"):
        rewrite_prompt(prompt, "MNIST", "diverse", random.Random(0))


def test_10type_is_seeded_and_draws_from_the_list():
    prompt = "Q?\n" + SHORT + "."
    draws = [rewrite_prompt(prompt, "VizWiz", "10type", random.Random(3)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(3)
    expected = rng.choice(TEMPLATES["VizWiz"]["10type"])
    assert draws[0] == "Q?\n" + expected + "."
    rng = random.Random(0)
    seen = {instruction_for("VizWiz", "10type", rng) for _ in range(200)}
    assert seen == set(TEMPLATES["VizWiz"]["10type"])
