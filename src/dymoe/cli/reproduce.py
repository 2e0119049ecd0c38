"""``dymoe reproduce main-table``: the DyMoE main table, every method under one budget, mean ± std over seeds."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce a paper table (main-table)")
    p.add_argument("table", choices=["main-table"])
    p.add_argument("--benchmark", default="minicoin", help="minicoin (this machine) or coin (a GPU cluster)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--backbone", default=None, help="backbone folder (coin: your llava-1.5-7b-hf)")
    p.add_argument("--output", "-o", default="runs/main-table")
    p.add_argument("--methods", default=None, help="comma-separated labels (default: all eight)")
    p.add_argument("--plan", default=None, help="a plan YAML (default configs/reproduce/main-table.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run, e.g. --set benchmark.data_root=/data/coin")
    p.set_defaults(func=run)


def run(args) -> int:
    from dymoe.runner.reproduce import DEFAULT_PLAN, reproduce

    reproduce(
        args.output, benchmark=args.benchmark, seeds=args.seeds, backbone=args.backbone,
        methods=args.methods.split(",") if args.methods else None, overrides=args.overrides,
        plan_path=args.plan or DEFAULT_PLAN,
    )
    return 0
