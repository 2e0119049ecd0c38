"""``dymoe chat RUN_DIR [--after-task K] [--image PATH] ["question"]``: talk to a trained run.

With a question: answers it and exits. Without one: interactive mode, one question per line; ``/image PATH``
sets the image for the next questions, ``/noimage`` drops it, ``/quit`` (or end of input) leaves. ``--json``
prints one JSON object per answer (``question``, ``image``, ``answer``, ``after_task``, ``task``, ``method``).
The model is the run's backbone with the adapter after task K (default: the last finished task) and the method's
inference routing (:class:`dymoe.runner.trained.TrainedRun`).
"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("chat", help="ask a trained run questions (one-shot or interactive)")
    p.add_argument("run_dir")
    p.add_argument("question", nargs="?", default=None, help="the question (omit for interactive mode)")
    p.add_argument("--after-task", type=int, default=None, help="use the adapter after task K (1-based; default: last)")
    p.add_argument("--image", default=None, help="image file the question is about")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's evaluation.max_new_tokens")
    p.add_argument("--json", action="store_true", help="one JSON object per answer")
    p.set_defaults(func=run, trailing="question")


def run(args) -> int:
    from dymoe.runner.trained import TrainedRun

    trained = TrainedRun(args.run_dir, after_task=args.after_task)
    method = trained.cfg.method.get("name")

    def reply(question: str, image: str | None) -> None:
        answer = trained.answer([(image, question)], max_new_tokens=args.max_new_tokens)[0]
        if args.json:
            print(json.dumps({"question": question, "image": image, "answer": answer,
                              "after_task": trained.after_task, "task": trained.task, "method": method}))
        else:
            print(answer)
        sys.stdout.flush()

    if args.question is not None:
        reply(args.question, args.image)
        return 0
    image = args.image
    interactive = sys.stdin.isatty()
    if interactive and not args.json:
        print(f"{method} after task {trained.after_task} ({trained.task}); /image PATH, /noimage, /quit",
              file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/noimage":
            image = None
            continue
        if line.startswith("/image "):
            image = line[len("/image "):].strip() or None
            continue
        reply(line, image)
    return 0
