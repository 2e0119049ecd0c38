"""A Python port of the tokenisation pycocoevalcap runs before CIDEr (no Java at run time).

pycocoevalcap's ``PTBTokenizer`` pipes the captions through Stanford CoreNLP 3.4.1's
``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` (a Java program) and then drops the tokens in
:data:`PUNCTUATIONS`. :func:`ptb_tokenize` reproduces that output for caption-like text; the test
``tests/eval/test_ptb.py`` compares it with the real Java tokenizer's output stored in
``tests/fixtures/ptb/`` (generated once with Java 17 and the jar shipped in the pycocoevalcap wheel).

What the port implements (the lexer rules that caption text exercises): quotes become ````/``''`` (single quotes
`````/``'``), brackets become ``-lrb-``/``-rrb-``/``-lsb-``/``-rsb-``/``-lcb-``/``-rcb-`` (lower-cased, so the
reference's upper-case punctuation list does **not** remove them — a quirk kept on purpose), clitics split
(``ca n't``, ``it 's``, ``1980 's``, ``can not``, ``gon na``), ``$``/``#``/``%``/``<``/``°`` split off, ``...``
and runs of ``!``/``?`` kept as one token, ``—`` becomes ``--``, abbreviations (titles, months, states, companies,
single initials, dotted acronyms) keep their period, and a dotted acronym at the end of a line gets an extra ``.``
token. Numbers (``12,000``, ``3.50``, ``2:30``, ``3/4``), hyphenated words, URLs and e-mail addresses stay whole.
Not implemented: the lexer's SGML/entity handling, emoticons, phone numbers, and its rarer abbreviation lists;
text containing those may tokenise differently from Java.
"""

from __future__ import annotations

import re

# the tokens pycocoevalcap's PTBTokenizer removes after tokenising (tokenizer/ptbtokenizer.py)
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_OPEN = {"(": "-LRB-", "[": "-LSB-", "{": "-LCB-"}
_CLOSE = {")": "-RRB-", "]": "-RSB-", "}": "-RCB-"}
_LEAD_SYMBOLS = "$#<>°&*+=@^~|"
# PTBLexer's abbreviation lists (case-sensitive, as in the lexer). ABBREV1 (months, days, states, companies,
# ABNUM, ABPTIT, etc/al/seq) keep their period, and at a sentence end (end of line, or before a capitalised word)
# an extra "." token follows
_ABBREV1 = set(
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec Mon Tue Tues Wed Thu Thurs Fri "
    "Ala Ariz Ark Calif Colo Conn Ct Dak Del Fla Ga Ill Ind Kan Kans Ky La Mass mass Md Mich Minn Miss miss Mo "
    "Mont Neb Nev Okla Ore ore Pa Penn Tenn Tex Va Vt Wash wash Wis Wisc Wyo "
    "Inc Co Cos Corp Pty Pte Ptys Ptes Ppty Ppte Pptys Pptes Ltd Plc Bancorp Dept Bhd Assn Univ Intl Sys "
    "No Nos Prop Ph tel est ext sq ft Jr Sr Bros Ed.D Ph.D Blvd Rd Esq etc al seq".split()
)
# ABBREV2 (titles, vs, ...): keep their period, never sentence-final
_ABBREV2 = set(
    "Mr Mrs Ms Miss Dr Drs Prof Profs Sen Sens Rep Reps Atty Attys Lt Col Gen Messrs Gov Govs Adm Rev Maj Sgt "
    "Cpl Pvt Capt St Ste Ave Pres Lieut Hon Brig Cmdr Comdr Mdr Pfc Spc Supt Supts Det M MM Mme Mmes Mlle Mlles "
    "vs Alex Cie a.k.a TREAS".split()
)
_ACRONYM = re.compile(r"^(?:[A-Za-z]\.){2,}$")
_INITIAL = re.compile(r"^[A-Za-z]\.$")
_URL = re.compile(r"^(?:(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)$", re.IGNORECASE)
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:[,.:/]\d+)*|\.\d+)$")
_CLITIC = re.compile(r"^(.+?)('s|'re|'ve|'ll|'d|'m)$", re.IGNORECASE)
_SPECIAL = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "wanna": ("wan", "na"), "gotta": ("got", "ta"),
            "gimme": ("gim", "me"), "lemme": ("lem", "me"), "y'all": ("y'", "all")}


def _split_middle(word: str) -> list[str]:
    """Split one word with no leading/trailing punctuation: clitics, symbols, inner commas."""
    if not word:
        return []
    if _URL.match(word) or _NUMBER.match(word):
        return [word]
    low = word.lower()
    if low in _SPECIAL:
        a, b = _SPECIAL[low]
        return [word[: len(a)], word[len(a):]]
    for sym in ("°", "<", ">", "%", "$", "#"):
        if sym in word:
            i = word.index(sym)
            return _split_middle(word[:i]) + [sym] + _split_middle(word[i + 1:])
    if "," in word and not re.search(r"\d,\d", word):
        i = word.index(",")
        return _split_middle(word[:i]) + [","] + _split_middle(word[i + 1:])
    if low.endswith("n't") and len(word) > 3:
        return _split_middle(word[:-3]) + [word[-3:]]
    m = _CLITIC.match(word)
    if m and m.group(1) not in ("'",):
        return _split_middle(m.group(1)) + [m.group(2)]
    return [word]


def _abbrev_kind(word: str) -> str | None:
    """``"sentence"`` (ABBREV1: an extra "." at a sentence end), ``"acronym"`` (``U.S.``: an extra "." at the end
    of the line), ``"keep"`` (titles, initials) or ``None`` (the final period is punctuation)."""
    stem = word[:-1]
    if _ACRONYM.match(word):
        return "acronym"
    if stem in _ABBREV1:
        return "sentence"
    if _INITIAL.match(word) or stem in _ABBREV2:
        return "keep"
    return None


def _tokenize_chunk(chunk: str, next_chunk: str | None, last: bool) -> list[str]:
    lead: list[str] = []
    trail: list[str] = []
    word = chunk.replace("—", "--").replace("–", "--")
    # leading punctuation
    while word:
        c = word[0]
        if word.startswith("--") and len(word) > 2 and not word[2:3].isdigit():
            lead.append("--")
            word = word[2:]
        elif c == '"':
            lead.append("``")
            word = word[1:]
        elif c == "`":
            lead.append("`")
            word = word[1:]
        elif c == "'" and not re.match(r"^'(?:n'$|(?:tis|twas|em|s|re|ve|ll|d|m)\b)", word, re.IGNORECASE):
            lead.append("`")
            word = word[1:]
        elif c in _OPEN:
            lead.append(_OPEN[c])
            word = word[1:]
        elif c in _LEAD_SYMBOLS and len(word) > 1:
            lead.append(c)
            word = word[1:]
        else:
            break
    # trailing punctuation (collected right to left)
    while word:
        if word.endswith("...") and word != "...":
            trail.append("...")
            word = word[:-3]
            continue
        c = word[-1]
        if c == '"':
            trail.append("''")
            word = word[:-1]
        elif c == "'" and len(word) > 1 and word.lower() != "y'" and not word.lower().endswith("'n'"):
            trail.append("'")
            word = word[:-1]
        elif c in _CLOSE:
            trail.append(_CLOSE[c])
            word = word[:-1]
        elif c in ",;:" and len(word) > 1:
            trail.append(c)
            word = word[:-1]
        elif c in "!?" and len(word) > 1:
            m = re.search(r"[!?]+$", word)
            if m.start() == 0:
                break
            trail.append(m.group(0))
            word = word[: m.start()]
        elif c == "%" and len(word) > 1:
            trail.append("%")
            word = word[:-1]
        elif c == "." and len(word) > 1 and not _NUMBER.match(word):
            kind = _abbrev_kind(word)
            if kind is not None:
                sentence_end = not trail and (last or (next_chunk is not None and next_chunk[:1].isupper()))
                if (kind == "sentence" and sentence_end) or (kind == "acronym" and last and not trail):
                    trail.append(".")
                break
            trail.append(".")
            word = word[:-1]
        else:
            break
    if word == '"':
        word = "''" if lead or trail else "``"
    elif word in _OPEN:
        word = _OPEN[word]
    elif word in _CLOSE:
        word = _CLOSE[word]
    return lead + _split_middle(word) + trail[::-1]


def ptb_tokenize_line(text: str) -> list[str]:
    """Tokenise one line as ``PTBTokenizer -preserveLines -lowerCase`` does (punctuation still in)."""
    chunks = text.replace("\n", " ").split()
    out: list[str] = []
    for i, chunk in enumerate(chunks):
        nxt = chunks[i + 1] if i + 1 < len(chunks) else None
        out += _tokenize_chunk(chunk, nxt, last=i == len(chunks) - 1)
    return [t.lower() for t in out if t]


def ptb_tokenize(text: str) -> str:
    """pycocoevalcap's caption tokenisation: PTB tokens, lower-cased, minus :data:`PUNCTUATIONS`, space-joined.

    >>> ptb_tokenize('A man\\'s "red" hat (large).')
    'a man \\'s red hat -lrb- large -rrb-'
    """
    return " ".join(t for t in ptb_tokenize_line(text) if t not in PUNCTUATIONS)
