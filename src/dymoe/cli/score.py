"""``dymoe score --scorer NAME --predictions PRED.jsonl --references REF.json [--annotations FILE] [--json]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dymoe import io
from dymoe.errors import DataError
from dymoe.eval.scorers import ANNOTATION_KEYS, SCORERS, base_name, load_annotations, read_json


def register(sub) -> None:
    """Add the subcommand's parser to ``sub`` (the ``dymoe`` subparsers)."""
    p = sub.add_parser("score", help="score predictions (merge.jsonl) against a CoIN test file")
    p.add_argument("--scorer", required=True, help=f"one of: {', '.join(SCORERS.names())}")
    p.add_argument("--predictions", required=True, help='JSONL, one {"question_id": ..., "text": ...} per line')
    p.add_argument("--references", required=True, help="CoIN test file (a JSON list)")
    p.add_argument(
        "--annotations",
        action="append",
        default=[],
        metavar="[KEY=]FILE",
        help="side file (repeatable): sqa problems=, pid_splits=; textvqa annotations=; gqa questions=. "
        "A bare FILE is the scorer's first key",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (accuracy, n, correct, ...)")
    p.set_defaults(func=run)


def read_jsonl(path: Path) -> list[dict]:
    """Read a predictions JSONL; a bad line raises :class:`DataError` naming the file and line."""
    return io.read_jsonl(path)


def _annotation_files(scorer: str, specs: list[str]) -> dict[str, Path]:
    keys = ANNOTATION_KEYS.get(base_name(scorer), ())
    files = {}
    for spec in specs:
        key, sep, path = spec.partition("=")
        if not sep:
            if not keys:
                raise DataError(f"scorer {scorer!r} reads no side files, got --annotations {spec}")
            key, path = keys[0], spec
        files[key] = Path(path)
    return files


def run(args: argparse.Namespace) -> int:
    """Run the command: score predictions; prints the accuracy (or one JSON object with --json)."""
    scorer = SCORERS.get(args.scorer)
    preds = read_jsonl(Path(args.predictions))
    refs = read_json(Path(args.references))
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"{args.references}: expected a JSON list of test rows")
    annotations = load_annotations(args.scorer, _annotation_files(args.scorer, args.annotations)) or None
    result = scorer(preds, refs, annotations)
    if args.json:
        out = {k: v for k, v in result.to_dict().items() if k != "per_sample"}
        print(json.dumps({"scorer": args.scorer, **out}))
    else:
        print(f"{args.scorer}: accuracy {result.accuracy:.2f}% ({result.correct:g} / {result.n})")
    return 0
