"""``dymoe build-base llava-1.5-untuned --vicuna DIR --clip DIR --projector mm_projector.bin --output DIR``.

Assembles the instruction-untuned LLaVA-1.5 the papers start from (:mod:`dymoe.models.build_base`) and checks that
the folder loads back as a ``LlavaForConditionalGeneration`` with its processor.
"""

from __future__ import annotations

import json

KINDS = ("llava-1.5-untuned",)


def register(sub) -> None:
    p = sub.add_parser("build-base", help="assemble a base model folder (the instruction-untuned LLaVA-1.5)")
    p.add_argument("kind", choices=KINDS, help="llava-1.5-untuned: Vicuna-7B-v1.5 + CLIP-L/14-336 + stage-1 projector")
    p.add_argument("--vicuna", required=True, help="the lmsys/vicuna-7b-v1.5 folder")
    p.add_argument("--clip", required=True, help="the openai/clip-vit-large-patch14-336 folder")
    p.add_argument("--projector", required=True,
                   help="mm_projector.bin of llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5 (a PyTorch pickle: "
                        "read with torch.load(weights_only=True))")
    p.add_argument("--output", "-o", required=True, help="the folder to write")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--no-system-prompt", action="store_true",
                   help="chat template without vicuna_v1's default system prompt")
    p.add_argument("--force", action="store_true", help="replace a non-empty --output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from dymoe.models.build_base import LLAVA15_SYSTEM, build_llava15_untuned, read_base_card
    from dymoe.models.llava import load_backbone

    out = build_llava15_untuned(
        vicuna=args.vicuna, clip=args.clip, projector=args.projector, output=args.output, dtype=args.dtype,
        system_prompt=None if args.no_system_prompt else LLAVA15_SYSTEM, overwrite=args.force,
    )
    model, processor = load_backbone(out, dtype="auto")
    card = read_base_card(out)
    print(json.dumps({"output": str(out), "model": type(model).__name__, "processor": type(processor).__name__,
                      "kind": card["kind"], "instruction_tuned": card["instruction_tuned"],
                      "parameters": sum(p.numel() for p in model.parameters())}))
    return 0
