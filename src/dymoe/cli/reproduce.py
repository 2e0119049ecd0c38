"""``dymoe reproduce main-table|ablation|task-router|cmoe-main-table|dmole|smoe-dsal|smoe-dsal-single|smoe-dsal-multi``:
a paper table (DyMoE's main table of eight methods, its component ablation IncMoELoRA → +L_aux → +TAG → +L_exc →
+L_spe, its task-router table, LLaVA-CMoE's Table 1 with Immediate and Last rows, D-MoLE's table, SMoE-DSAL's
continual-learning table with its ablations, and its Table 2 single-domain and multi-domain settings), mean ± std
over seeds; the main tables under the baselines' own papers' settings (``--budget paper``) or one shared budget
(``--budget equal``)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("reproduce",
                       help="reproduce a paper table (main-table, ablation, task-router, cmoe-main-table, dmole, smoe-dsal, "
                            "smoe-dsal-single, smoe-dsal-multi)")
    p.add_argument("table", choices=["main-table", "ablation", "task-router", "cmoe-main-table", "dmole", "smoe-dsal",
                                     "smoe-dsal-single", "smoe-dsal-multi"])
    p.add_argument("--benchmark", default=None,
                   help="minicoin (this machine) or coin (a GPU cluster); dmole: minicoin or dmole9; smoe-dsal: minidomains or smoe3 "
                        "(default: minicoin, or the plan's first base: minidomains for smoe-dsal)")
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

    output = args.output or ("runs/smoe-dsal" if args.table.startswith("smoe-dsal") else "runs/main-table")
    reproduce(
        output, benchmark=args.benchmark, seeds=args.seeds, backbone=args.backbone,
        methods=args.methods.split(",") if args.methods else None, overrides=args.overrides,
        plan_path=args.plan, table=args.table, budget=args.budget,
    )
    return 0
