"""CIDEr for captioning (D-MoLE's VizWiz-Cap, TextCaps, Flickr30k): pycocoevalcap's ``Cider`` on PTB tokens.

D-MoLE's ``eval/caption/evaluate_caption.py`` runs ``COCOEvalCap`` (pycocoevalcap) on the predictions: the
ground-truth captions and the predictions are tokenised with Stanford's PTBTokenizer (Java), and the corpus CIDEr
over the *predicted* images is reported x 100. Here the tokenisation is :func:`dymoe.eval.scorers.ptb.ptb_tokenize`
(a Python port, equal to the Java output on the fixtures) and the CIDEr arithmetic is pycocoevalcap's own
``pycocoevalcap.cider.cider.Cider`` (n = 4, sigma = 6; idf from the evaluated images' references).
"""

from __future__ import annotations

from dymoe.errors import DataError
from dymoe.eval.scorers.base import (
    ScoreResult,
    field_of,
    index_references,
    lookup,
    make_result,
    pred_text,
    require_qid,
    with_headline,
)
from dymoe.eval.scorers.ptb import ptb_tokenize


def _captions(row: dict, where: str) -> list[str]:
    caps = field_of(row, "captions", where)
    if isinstance(caps, str):
        caps = [caps]
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
        raise DataError(f"{where}: expected 'captions' as a non-empty list of strings, got {caps!r}")
    return caps


def score_cider(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """Corpus CIDEr x 100 over the predicted images (COCOEvalCap behaviour).

    References carry ``captions`` (the human captions of that image, any number); predictions one ``text`` each.
    The denominator is the number of predictions; a prediction for an unknown id or a second prediction for the
    same id is an error (COCO's ``loadRes`` / ``Cider`` assert on both). ``per_sample`` holds each image's CIDEr
    (not x 100; it may exceed 1). The headline ``accuracy`` is CIDEr x 100 and may exceed 100.
    """
    from pycocoevalcap.cider.cider import Cider  # the reference implementation, used as is

    refs = index_references(references)
    gts: dict[str, list[str]] = {}
    res: dict[str, list[str]] = {}
    for i, p in enumerate(predictions):
        where = f"prediction {i}"
        qid = require_qid(p, where)
        if qid in res:
            raise DataError(f"{where}: a second prediction for question_id {qid!r} (CIDEr takes one caption each)")
        row = lookup(refs, qid, where, "the references")
        gts[qid] = [ptb_tokenize(c) for c in _captions(row, f"reference {qid!r}")]
        res[qid] = [ptb_tokenize(pred_text(p, where))]
    if not res:
        return with_headline(make_result([]), "CIDEr", {"CIDEr": 0.0})
    score, scores = Cider().compute_score(gts, res)
    per = [(qid, float(s)) for qid, s in zip(gts.keys(), scores)]
    return with_headline(make_result(per), "CIDEr", {"CIDEr": float(score) * 100.0})
