"""``dymoe export RUN_DIR [--after-task K] [--format peft|merged|hub] [--output DIR] [--push REPO]``.

Adapters that leave dymoe (see :mod:`dymoe.export`): a PEFT LoRA for the plain-LoRA methods, the full model
(``merged``), or a folder for the Hugging Face Hub with a model card (``hub``; ``--push REPO`` uploads it when
online). Nothing is uploaded unless ``--push`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dymoe.errors import DymoeError


def register(sub) -> None:
    """Add the subcommand's parser to ``sub`` (the ``dymoe`` subparsers)."""
    p = sub.add_parser("export", help="export a run's adapter: PEFT LoRA, merged full model, or a Hub folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (dymoe run --output)")
    p.add_argument("--after-task", type=int, default=None, metavar="K",
                   help="the model after task K (1-based; default: the last finished task)")
    p.add_argument("--format", dest="fmt", choices=["peft", "merged", "hub"], default="peft",
                   help="peft: a PEFT LoRA folder (LoRA, EWC, LwF, IncLoRA, O-LoRA); merged: the full model; "
                        "hub: a folder for huggingface_hub.upload_folder with a model card (default: peft)")
    p.add_argument("--output", metavar="DIR", default=None,
                   help="the folder to write (default: ./<run name>-<format>-after<K|last>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--push", metavar="REPO", default=None,
                   help="with --format hub: upload the folder to this Hub model repo (needs HF_HUB_OFFLINE=0 and a "
                        "token; nothing is uploaded without it)")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dymoe.export import export_run

    if args.push and args.fmt != "hub":
        raise DymoeError("--push uploads a Hub folder: use it with --format hub")
    run_dir = Path(args.run_dir)
    output = Path(args.output) if args.output else Path(
        f"{run_dir.resolve().name}-{args.fmt}-after{args.after_task or 'last'}")
    out = export_run(run_dir, output, fmt=args.fmt, after_task=args.after_task, overwrite=args.overwrite)
    print(f"wrote {out}", file=sys.stderr)
    if args.push:
        from dymoe.export.hub import push

        url = push(out, args.push, private=args.private)
        print(f"uploaded to {args.push}: {url}", file=sys.stderr)
    print(out)
    return 0
