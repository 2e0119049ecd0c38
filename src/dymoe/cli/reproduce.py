"""``dymoe reproduce main-table|ablation``: a DyMoE paper table (the main table of eight methods, or the component
ablation IncMoELoRA → +L_aux → +TAG → +L_exc → +L_spe), mean ± std over seeds; the main table under the baselines'
own papers' settings (``--budget paper``) or one shared budget (``--budget equal``)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce a paper table (main-table, ablation, task-router, dmole)")
    p.add_argument("table", choices=["main-table", "ablation", "task-router", "dmole"])
    p.add_argument("--benchmark", default="minicoin", help="minicoin (this machine) or coin (a GPU cluster); the dmole table: minicoin or dmole9")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--backbone", default=None, help="backbone folder (coin: the folder `dymoe build-base llava-1.5-untuned` wrote)")
    p.add_argument("--output", "-o", default=None,
                   help="output folder (default runs/main-table for both tables, so the ablation reuses the main "
                        "table's IncMoELoRA and LLaVA-DyMoE runs)")
    p.add_argument("--budget", choices=["paper", "equal"], default=None,
                   help="main table: 'paper' = each baseline at its own paper's settings (default on coin), 'equal' "
                        "= every baseline at one DyMoE task's LoRA budget, projector frozen (default on minicoin)")
    p.add_argument("--methods", default=None, help="comma-separated labels (default: every row of the plan)")
    p.add_argument("--plan", default=None, help="a plan YAML (default configs/reproduce/<table>.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run, e.g. --set benchmark.data_root=/data/coin")
    p.set_defaults(func=run)


def run(args) -> int:
    from dymoe.runner.reproduce import reproduce

    reproduce(
        args.output or "runs/main-table", benchmark=args.benchmark, seeds=args.seeds, backbone=args.backbone,
        methods=args.methods.split(",") if args.methods else None, overrides=args.overrides,
        plan_path=args.plan, table=args.table, budget=args.budget,
    )
    return 0
