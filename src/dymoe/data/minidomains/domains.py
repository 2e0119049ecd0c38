"""The three synthetic domains of mini-domains (the miniature of SMoE's Medicine → Chart → Math, smoe-dsal.md §6).

Each maker draws one picture and its rows from a ``numpy`` generator: ``make(rng) -> Item`` with the image and,
per kind of row (a training file or an evaluation set of the domain), the prompt, the answer and the reference
fields the real benchmark's scorer reads. The pictures are 64×64 and stay readable at 32×32.

- **Medicine**: grey "scans" (CT: a round body on black; X-ray: a chest with ribs on dark grey; MRI: a brain-like
  disc with a ring) of an organ (chest, brain, abdomen), with or without a bright lesion on the left or right.
  One closed (yes/no) and one open (modality, organ, side) question per picture, scored like VQA-RAD / SLAKE (``medvqa``: closed
  accuracy and open recall); a description file plays LLaVA-Med's instruct conversations (training only).
- **Chart**: bar, line or pie charts of 3–4 colour categories with integer values 1–9 on a faint unit grid.
  QA (a value, the largest / smallest category, a difference: ``chartqa-relaxed``), chart-to-table (the DePlot
  linearisation ``category | value`` rows: ``chart-table-rms``) and chart-to-text (a templated summary: ``bleu4``).
- **Math**: counting / arithmetic over groups of coloured shapes (MWP-like) and rectangles or right triangles on
  a unit grid with area / perimeter questions (GPS-like), numeric answers (``math``, pooled accuracy, per-dataset
  numbers from the ``dataset`` field), two questions per figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SHORT = "Answer the question using a single word or phrase."
TABLE = "Convert the chart to a data table."
SUMMARY = "Write a short summary of the chart."
NUMBER = "Answer with a number."

CATEGORY_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (235, 205, 30),
    "purple": (140, 50, 180), "orange": (245, 130, 20),
}


@dataclass
class Row:
    """One question on a picture: ``prompt``, ``answer`` (the training target) and the reference fields of a test
    row (``answer``, ``answer_type``, ``table``, ``dataset`` ...)."""

    prompt: str
    answer: str
    reference: dict = field(default_factory=dict)


@dataclass
class Item:
    """A picture and its rows per kind (training files and evaluation sets of the domain)."""

    image: Image.Image
    rows: dict[str, list[Row]]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


# ------------------------------------------------------------------------------------------------------ medicine
MODALITIES = ("ct", "x-ray", "mri")
ORGANS = ("chest", "brain", "abdomen")
SIDES = ("left", "right")


def _scan(rng: np.random.Generator, modality: str, organ: str, lesion: str | None) -> Image.Image:
    bg = {"ct": 0, "x-ray": 45, "mri": 20}[modality]
    img = Image.new("L", (SIZE, SIZE), bg)
    d = ImageDraw.Draw(img)
    body = {"ct": 150, "x-ray": 110, "mri": 130}[modality] + int(rng.integers(-10, 11))
    if organ == "chest":
        d.ellipse((6, 10, 58, 56), fill=body)
        d.ellipse((12, 16, 29, 50), fill=body - 80)  # lungs
        d.ellipse((35, 16, 52, 50), fill=body - 80)
    elif organ == "brain":
        d.ellipse((10, 8, 54, 58), fill=235)  # skull
        d.ellipse((14, 12, 50, 54), fill=body)
        d.line((32, 14, 32, 52), fill=body - 50, width=2)
    else:
        d.rounded_rectangle((6, 12, 58, 54), radius=10, fill=body)
        d.ellipse((22, 26, 42, 44), fill=body - 50)  # bowel loop
    if modality == "x-ray":
        for y in range(16, 52, 7):  # ribs / bone lines
            d.line((8, y, 56, y + 2), fill=min(body + 70, 255), width=1)
    if modality == "mri":
        d.ellipse((4, 4, 60, 60), outline=200, width=2)
    if lesion is not None:
        cx = int(rng.integers(16, 25)) if lesion == "left" else int(rng.integers(40, 49))
        cy = int(rng.integers(22, 42))
        r = int(rng.integers(4, 7))
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=250)
    return img.convert("RGB")


def make_medicine(rng: np.random.Generator) -> Item:
    modality, organ = _pick(rng, MODALITIES), _pick(rng, ORGANS)
    lesion = _pick(rng, SIDES) if rng.random() < 0.5 else None
    image = _scan(rng, modality, organ, lesion)
    yn = "yes" if lesion else "no"
    asked = _pick(rng, MODALITIES)
    closed = [
        Row(f"Is there an abnormality in this image?\n{SHORT}", yn),
        Row(f"Is this a {asked.upper()} scan?\n{SHORT}", "yes" if asked == modality else "no"),
    ]
    if lesion:
        side = _pick(rng, SIDES)
        closed.append(Row(f"Is the lesion on the {side} side?\n{SHORT}", "yes" if side == lesion else "no"))
    opened = [
        Row(f"What imaging modality is used?\n{SHORT}", modality),
        Row(f"Which organ is shown in the image?\n{SHORT}", organ),
    ]
    if lesion:
        opened.append(Row(f"Where is the abnormality located?\n{SHORT}", f"{lesion} {organ}"))
    qc, qo = _pick(rng, closed), _pick(rng, opened)  # one closed and one open question per picture
    qc.reference = {"answer": qc.answer, "answer_type": "CLOSED"}
    qo.reference = {"answer": qo.answer, "answer_type": "OPEN"}
    finding = f"a lesion on the {lesion} side" if lesion else "no abnormality"
    caption = Row("Describe the findings of this image.", f"{modality} of the {organ} showing {finding}.")
    return Item(image, {"vqa": [qc, qo], "caption": [caption]})


# --------------------------------------------------------------------------------------------------------- chart
CHART_KINDS = ("bar", "line", "pie")


def _chart(kind: str, cats: list[str], vals: list[int]) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (250, 250, 250))
    d = ImageDraw.Draw(img)
    if kind == "pie":
        total, start = sum(vals), -90.0
        for c, v in zip(cats, vals):
            end = start + 360.0 * v / total
            d.pieslice((6, 6, 58, 58), start, end, fill=CATEGORY_COLOURS[c])
            start = end
        return img
    x0, y0, unit = 8, 58, 5  # origin and 5 px per unit: values 1..9 fit in 45 px
    for v in range(1, 10):
        d.line((x0, y0 - v * unit, 60, y0 - v * unit), fill=(225, 225, 225))
    d.line((x0, 8, x0, y0), fill=(60, 60, 60))
    d.line((x0, y0, 60, y0), fill=(60, 60, 60))
    step = 52 // len(cats)
    pts = []
    for i, (c, v) in enumerate(zip(cats, vals)):
        xc = x0 + step * i + step // 2
        if kind == "bar":
            d.rectangle((xc - step // 3, y0 - v * unit, xc + step // 3, y0 - 1), fill=CATEGORY_COLOURS[c])
        else:
            pts.append((xc, y0 - v * unit))
    if kind == "line":
        d.line(pts, fill=(90, 90, 90), width=1)
        for (x, y), c in zip(pts, cats):
            d.rectangle((x - 3, y - 3, x + 3, y + 3), fill=CATEGORY_COLOURS[c])
    return img


def chart_table(cats: list[str], vals: list[int]) -> str:
    """The gold table in DePlot's linearisation (header row, then ``category | value``)."""
    return "\n".join(["category | value"] + [f"{c} | {v}" for c, v in zip(cats, vals)])


def make_chart(rng: np.random.Generator) -> Item:
    kind = _pick(rng, CHART_KINDS)
    n = int(rng.integers(3, 5))
    cats = [str(c) for c in rng.choice(list(CATEGORY_COLOURS), size=n, replace=False)]
    vals = [int(v) for v in rng.choice(np.arange(1, 10), size=n, replace=False)]  # distinct: one largest
    image = _chart(kind, cats, vals)
    hi, lo = cats[int(np.argmax(vals))], cats[int(np.argmin(vals))]
    a, b = (int(i) for i in rng.choice(n, size=2, replace=False))
    questions = [Row(f"Which category has the largest value?\n{SHORT}", hi),
                 Row(f"Which category has the smallest value?\n{SHORT}", lo)]
    if kind != "pie":
        c = int(rng.integers(n))
        questions += [Row(f"What is the value of {cats[c]}?\n{SHORT}", str(vals[c])),
                      Row(f"What is the difference between {cats[a]} and {cats[b]}?\n{SHORT}",
                          str(abs(vals[a] - vals[b])))]
    qa = _pick(rng, questions)
    qa.reference = {"answer": qa.answer}
    table = chart_table(cats, vals)
    name = {"bar": "a bar chart", "line": "a line chart", "pie": "a pie chart"}[kind]
    summary = (f"{name} of {n} categories. {hi} is the largest with {max(vals)} and {lo} is the smallest with "
               f"{min(vals)}.")
    return Item(image, {"qa": [qa], "table": [Row(TABLE, table, {"table": table})],
                        "text": [Row(SUMMARY, summary, {"answer": summary})]})


# ---------------------------------------------------------------------------------------------------------- math
SHAPE_NAMES = ("circle", "square")


def _shapes(d: ImageDraw.ImageDraw, rng: np.random.Generator, counts: list[tuple[str, str, int]]) -> None:
    cells = [(x, y) for y in range(4) for x in range(4)]
    order = rng.permutation(len(cells))
    k = 0
    for colour, shape, n in counts:
        for _ in range(n):
            x, y = cells[int(order[k])]
            k += 1
            box = (4 + 15 * x, 4 + 15 * y, 15 + 15 * x, 15 + 15 * y)
            (d.ellipse if shape == "circle" else d.rectangle)(box, fill=CATEGORY_COLOURS[colour])


def _math_question(rng: np.random.Generator, fig: dict) -> Row:
    """One question on a figure (``fig`` from :func:`make_math`): counting / arithmetic or area / perimeter."""
    if fig["kind"] == "groups":
        (c1, n1), (c2, n2) = fig["groups"]
        kind = _pick(rng, ("total", "more", "count"))
        if kind == "total":
            q, ans = "How many objects are there in total?", n1 + n2
        elif kind == "more":
            big, small = (c1, c2) if n1 >= n2 else (c2, c1)
            q, ans = f"How many more {big} objects than {small} objects are there?", abs(n1 - n2)
        else:
            c, n = fig["groups"][int(rng.integers(2))]
            q, ans = f"How many {c} objects are there?", n
        dataset = "counting" if kind == "count" else "arithmetic"
    else:
        w, h = fig["size"]
        if fig["kind"] == "rectangle":
            kind = _pick(rng, ("area", "perimeter"))
            q = f"What is the {kind} of the rectangle in grid units?"
            ans = w * h if kind == "area" else 2 * (w + h)
        else:
            kind = _pick(rng, ("area", "legs"))
            if kind == "area":
                q, ans = "What is the area of the right triangle in grid units?", w * h / 2
            else:
                q, ans = "What is the sum of the two legs of the right triangle in grid units?", w + h
        dataset = "geometry"
    answer = f"{ans:g}"
    return Row(f"{q}\n{NUMBER}", answer, {"answer": answer, "dataset": dataset})


def make_math(rng: np.random.Generator) -> Item:
    img = Image.new("RGB", (SIZE, SIZE), (245, 245, 240))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.5:  # MWP-like: counting and arithmetic over two groups
        c1, c2 = (str(c) for c in rng.choice(["red", "blue", "green", "orange"], size=2, replace=False))
        s1, s2 = _pick(rng, SHAPE_NAMES), _pick(rng, SHAPE_NAMES)
        n1, n2 = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        _shapes(d, rng, [(c1, s1, n1), (c2, s2, n2)])
        fig = {"kind": "groups", "groups": [(c1, n1), (c2, n2)]}
    else:  # GPS-like: a figure on a unit grid
        unit = 6
        for v in range(0, 10):
            d.line((4 + v * unit, 4, 4 + v * unit, 58), fill=(210, 210, 210))
            d.line((4, 4 + v * unit, 58, 4 + v * unit), fill=(210, 210, 210))
        w, h = int(rng.integers(2, 9)), int(rng.integers(2, 9))
        x0, y0 = int(rng.integers(0, 10 - w)), int(rng.integers(0, 10 - h))
        box = (4 + x0 * unit, 4 + y0 * unit, 4 + (x0 + w) * unit, 4 + (y0 + h) * unit)
        if rng.random() < 0.5:
            d.rectangle(box, outline=(30, 70, 220), width=2)
            fig = {"kind": "rectangle", "size": (w, h)}
        else:
            d.polygon([(box[0], box[3]), (box[2], box[3]), (box[0], box[1])], outline=(200, 40, 40), width=2)
            fig = {"kind": "triangle", "size": (w, h)}
    first = _math_question(rng, fig)
    second = _math_question(rng, fig)
    while second.prompt == first.prompt:  # two different questions per figure
        second = _math_question(rng, fig)
    return Item(img, {"math": [first, second]})


MAKERS = {"Medicine": make_medicine, "Chart": make_chart, "Math": make_math}
