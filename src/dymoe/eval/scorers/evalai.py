"""The EvalAI / m4c VQA answer normaliser and the TextVQA soft accuracy (leave-one-out over 10 answers).

A faithful port of ``EvalAIAnswerProcessor`` and ``TextVQAAccuracyEvaluator._compute_answer_scores`` of
``m4c_evaluator.py`` (LLaVA / CoIN), itself copied from facebookresearch/mmf. Two quirks are kept on purpose:

* ``PERIOD_STRIP = r"(?!<=\\d)(\\.)(?!\\d)"`` was meant as a look-behind but is a look-ahead for the literal
  text ``<=`` followed by a digit; so only periods *not followed by a digit* are removed ("5." → "5", "2.5" kept,
  "a.b" → "ab").
* ``PERIOD_STRIP.sub("", text, re.UNICODE)`` passes ``re.UNICODE`` (= 32) as ``count``: at most 32 periods go.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
PUNCTUATIONS = (";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")


def _process_punctuation(in_text: str) -> str:
    out_text = in_text
    for p in PUNCTUATIONS:
        if (p + " " in in_text or " " + p in in_text) or (re.search(COMMA_STRIP, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return PERIOD_STRIP.sub("", out_text, re.UNICODE)  # noqa: B034 - the reference's count=32 quirk, kept


def _process_digit_article(in_text: str) -> str:
    words = [NUMBER_MAP.get(w, w) for w in in_text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """EvalAI answer normalisation: lower-case, punctuation, number words → digits, articles, contractions.

    >>> normalize_answer("Two dogs!")
    '2 dogs'
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def answer_scores(raw_answers: Sequence[str]) -> dict[str, float]:
    """Soft score of every distinct (normalised) human answer.

    For each distinct answer ``u``: the mean over the ``len(raw_answers)`` leave-one-out subsets of
    ``min(1, #matches of u in the subset / 3)``. The reference asserts exactly 10 answers; callers check that.
    """
    answers = [normalize_answer(a) for a in raw_answers]
    scores: dict[str, float] = {}
    for u in set(answers):
        accs = []
        for i in range(len(answers)):
            matches = sum(1 for j, a in enumerate(answers) if j != i and a == u)
            accs.append(min(1.0, matches / 3))
        scores[u] = sum(accs) / len(accs)
    return scores


def soft_accuracy(prediction: str, raw_answers: Sequence[str]) -> float:
    """VQA/TextVQA soft accuracy of one prediction against its human answers, in [0, 1]."""
    return answer_scores(raw_answers).get(normalize_answer(prediction), 0.0)
