"""The continual runner: one method over a task sequence, reading top to bottom like a recipe.

    for each task k:  method.before_task → train → method.after_task → save checkpoint
                      → evaluate every task seen so far → append row k of the accuracy matrix → report

Everything is resumable: a finished task (its checkpoint exists) is not retrained, a finished evaluation (its
predictions file exists) is re-scored from disk instead of regenerated, and step checkpoints
(``training.save_every_steps``) resume inside a task. Seeds are set per task, so a run killed at any point and
restarted ends with the same ``matrix.json`` as an uninterrupted one. Only the main process writes files.

Before anything is written the run directory is locked (:class:`~dymoe.runner.rundir.RunLock`), the temporaries
of a killed run are removed, the stored config is compared, every test set is read and run through its scorer
and every training file is checked; ``config.yaml`` is written once the model has loaded. Each task's training
log is saved with its checkpoint, so it survives a kill before ``metrics.json`` is written.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from dymoe.config import RunConfig, dump_config
from dymoe.data.coin import check_scorable, load_train, read_json_rows
from dymoe.data.collate import VLMCollator, text_only_samples
from dymoe.data.formats import load_eval_set
from dymoe.data.tasks import Benchmark, EvalSet, TaskSpec, initial_task, load_benchmark
from dymoe.errors import CheckpointError, ConfigError, DataError, DymoeError, OutputError
from dymoe.eval.forgetting import FILE as FORMAT_FORGETTING_FILE
from dymoe.eval.forgetting import format_forgetting, score_cell, variants
from dymoe.eval.metrics import METRICS, save_matrix, summarize
from dymoe.eval.scorers import base_name, load_annotations
from dymoe.injection.accounting import parameter_report
from dymoe.injection.inject import inject
from dymoe.injection.state import load_adapter_into, load_method_state, save_adapter
from dymoe.io import (
    WRITE_ERRNOS,
    atomic_write_json,
    atomic_write_text,
    describe_os_error,
    writing,
)
from dymoe.methods import build_method
from dymoe.methods.base import TaskInfo, attach_method_modules
from dymoe.models.families import is_text_only
from dymoe.runner.cost import (
    PROBE_QUESTIONS,
    inference_cost,
    model_bytes,
    peak_memory,
    reset_peak_memory,
    task_cost,
)
from dymoe.runner.engines import uses_deepspeed
from dymoe.runner.evaluation import (
    COMBINE_RULE,
    evaluate_row,
    evaluated_tasks,
    load_scores,
    read_predictions,
    save_scores,
    variant_dir,
    variants_of,
)
from dymoe.runner.planning import run_initial_phase, run_planning
from dymoe.runner.protocol import PROTOCOL_FILE, build_card, differing_fields, protocol_key, read_card, short
from dymoe.runner.resources import resolve_backbone_path, resolve_minicoin, resolve_minidomains
from dymoe.runner.rundir import RunDir, RunLock
from dymoe.runner.trainer import TaskTrainer, resolve_batching

log = logging.getLogger(__name__)

RESUME_HINT = ("Every file written so far in {root} is complete (writes are atomic): make room or make the directory "
               "writable, then run the same command again to resume where it stopped.")


def make_accelerator(cfg: RunConfig, run_dir: Path):
    """An ``accelerate.Accelerator`` for this run (picks up ``accelerate launch`` / torchrun environments).

    Gradient accumulation is not the accelerator's: the trainer owns it (see :mod:`dymoe.runner.trainer`).
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    trackers = [t for t in cfg.trackers if t != "none"]
    if "tensorboard" in trackers:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            log.warning("tensorboard is not installed: logging to TensorBoard is off")
            trackers.remove("tensorboard")
    _destroy_process_group_at_exit()
    cpu = not torch.cuda.is_available()
    handlers = []
    if cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # DeepSpeed on CPU (its CPU accelerator, gloo): accelerate only enables DeepSpeed with cpu=False
        cpu = False
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        # cpu=True on CPU-only machines: that is what makes accelerate see torchrun's gloo ranks (MULTI_CPU)
        cpu=cpu,
        kwargs_handlers=handlers or None,
        mixed_precision=mp,
        log_with=trackers or None,
        project_dir=str(run_dir / "logs"),
    )


_AT_EXIT: list[bool] = []


def _destroy_process_group_at_exit() -> None:
    if _AT_EXIT:
        return
    _AT_EXIT.append(True)

    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def resolve_benchmark(cfg: RunConfig) -> Benchmark:
    """The benchmark with its tasks in order, truncated to those named by ``benchmark.order`` if a list."""
    b = cfg.benchmark
    if b.file in ("minicoin", "minidomains"):
        path = (resolve_minicoin if b.file == "minicoin" else resolve_minidomains)(b.minicoin_scale)
    else:
        path = Path(b.file)
    return load_benchmark(path, data_root=b.data_root, order=b.order, instruction_type=b.instruction_type)


def environment(cfg: RunConfig, accelerator, batching=None) -> dict:
    """Versions, device, git commit and the resolved batch layout, for ``env.json``."""
    import accelerate
    import transformers

    commit = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    dev = accelerator.device
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type).rsplit(".", 1)[-1],
        **({"batching": batching.to_dict()} if batching is not None else {}),
        "mixed_precision": str(accelerator.mixed_precision),
        "torch_threads": torch.get_num_threads(),
        "seed": cfg.training.seed,
        "git_commit": commit,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# what a resume records of the process that resumed (the first start's record stays the top level of env.json)
_RESUME_KEYS = ("git_commit", "started", "python", "torch", "transformers", "accelerate", "device", "num_processes",
                "distributed_type", "mixed_precision", "torch_threads")


def _env_record(path: Path, env: dict, tasks: list[str], benchmark: str) -> dict:
    """``env.json`` for a start: the environment of the run's first start, with one entry per resume under
    ``resumes`` (commit, time, versions, device of each resuming process), so a resumed run keeps the commit it
    started from and says what continued it."""
    record = {**env, "tasks": tasks, "benchmark": benchmark}
    if not path.is_file():
        return record
    try:
        first = json.loads(path.read_text())
    except (OSError, ValueError):
        return record  # an unreadable env.json (a pre-atomic-write run) is replaced, as before
    if not isinstance(first, dict) or "started" not in first:
        return record
    resumes = list(first.get("resumes") or [])
    resumes.append({k: env.get(k) for k in _RESUME_KEYS})
    return {**first, "resumes": resumes}


def _subsample(items: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def _replay(past: dict[str, list], n: int, seed: int) -> list:
    if n <= 0 or not past:
        return []
    from dymoe.data.replay import select_replay

    return select_replay(past, n, seed)


def restrict_to_evaluated(annotations: dict, question_ids: list) -> dict:
    """Side files cut to the evaluated questions: ScienceQA's ``pid_splits["test"]`` (its scorer's denominator)."""
    if "pid_splits" not in annotations:
        return annotations
    kept = {str(q) for q in question_ids}
    splits = dict(annotations["pid_splits"])
    splits["test"] = [pid for pid in splits.get("test", []) if str(pid) in kept]
    return {**annotations, "pid_splits": splits}


class ContinualRun:
    """One method over one task sequence in one run directory (see the module docstring).

    ``evaluation_only``: re-evaluating an existing run (``dymoe eval``) from its checkpoints; results go to the run
    directory when the evaluation settings are the stored ones, else to ``results_dir`` (``RUN/evals/<name>``),
    which gets its own ``config.yaml`` so that every matrix sits beside the settings that produced it.
    """

    def __init__(self, cfg: RunConfig, output: str | Path, *, accelerator=None, evaluation_only: bool = False,
                 results_dir: str | Path | None = None):
        self.cfg = cfg
        self.evaluation_only = evaluation_only
        self.method = build_method(cfg.method)  # first: an unknown method or option is refused before anything
        self.dir = RunDir(output)  # checkpoints (and, for a run, everything)
        self.out = RunDir(results_dir) if results_dir is not None else self.dir  # matrix, metrics, predictions
        self.lock = RunLock(self.dir.root)
        self.acc = accelerator or make_accelerator(cfg, self.dir.root)
        self.main = self.acc.is_main_process
        self._cells: dict[tuple, dict | None] = {}  # format-forgetting scores by predictions file

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Lock the run directory, check everything that can be checked, load the model; only then write
        ``config.yaml`` and ``env.json``. A failure leaves a new run directory as it was: absent."""
        if self.main:
            self.dir.check_is_run_dir()
            self.lock.acquire()  # first: a second process on this directory stops here, before reading anything
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run directory (the lock)."""
        if self.main:
            self.lock.release()

    def _setup(self) -> None:
        cfg, acc = self.cfg, self.acc
        # the batch layout first: a global batch that does not divide is an error before anything is written
        try:
            self.batching = resolve_batching(cfg.training, acc.num_processes)
        except ConfigError:
            if not self.evaluation_only:
                raise
            self.batching = None  # re-evaluating never trains: any number of processes will do
        if uses_deepspeed(acc) and cfg.training.save_every_steps and not self.evaluation_only:
            raise ConfigError("training.save_every_steps (step checkpoints inside a task) is not supported with "
                              "DeepSpeed; task checkpoints are. Set it to 0 or use DDP (configs/accelerate/multi_gpu.yaml)")
        if self.main and not self.evaluation_only:
            print(f"training: {self.batching.describe()}", file=sys.stderr)
        resolved = dump_config(cfg)
        if self.main:
            self.dir.remove_temp_files()  # leftovers of a killed run; no one else writes here (we hold the lock)
            self.out.check_config(resolved)
        with acc.main_process_first():
            self.benchmark = resolve_benchmark(cfg)
            backbone = resolve_backbone_path(cfg.backbone.path)
        self.tasks: list[TaskSpec] = self.benchmark.tasks
        self.names = [t.name for t in self.tasks]
        known = self.names + [f"{t.name}/{es.name}" for t in self.tasks for es in t.eval_sets]
        for name in cfg.evaluation.scorers:
            if name not in known:
                raise ConfigError(f"evaluation.scorers: no task {name!r} in this run (or 'task/set'); tasks: "
                                  f"{self.names}")
        self._train_sets: dict[str, list] = {}
        self._test_sets: dict[str, list] = {}
        self._annotations: dict[tuple[str, str], dict] = {}
        from dymoe.models.llava import load_backbone

        dtype = cfg.backbone.dtype
        if dtype == "auto":
            dtype = "bfloat16" if acc.device.type == "cuda" else "float32"
        self.model, self.processor = load_backbone(
            backbone, dtype=dtype, attn_implementation=cfg.backbone.attn_implementation,
            trust_remote_code=cfg.backbone.trust_remote_code,
        )
        self.adapter_cfg = self.method.configure_adapter(cfg.adapter)
        self.adapter = inject(self.model, self.adapter_cfg)
        # the method's own modules live inside the model: moved, wrapped by DDP/ZeRO and saved with the method state
        attach_method_modules(self.model, self.method)
        self.model.to(acc.device)
        if cfg.training.gradient_checkpointing:
            # non-reentrant checkpointing: observer losses computed outside the region still get gradients
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(self.model, "enable_input_require_grads"):
                self.model.enable_input_require_grads()
        self.method.setup(self.model, self.adapter)
        # every test set read and checked against its scorer, every training file checked: before anything trains
        # or is written (after the processor, which says whether image samples are taken)
        for task in self.tasks:
            for es in task.eval_sets:  # every evaluation set is scored (runner.evaluation)
                scorer = self.scorer_name(task, es)
                check_scorable(es.path, self.test_set(task, es), scorer, self.annotations(task, scorer, es))
            if not self.evaluation_only:
                _check_train_file(task)
        # the general-ability check's benchmarks, read and checked like the tasks' test sets (runner.general)
        self.general = None
        if cfg.evaluation.general.benchmarks and not self.evaluation_only:
            from dymoe.runner.general import GeneralCheck

            self.general = GeneralCheck(self)
        self.collator = VLMCollator(self.processor, max_length=cfg.training.max_length)
        self.trainer = TaskTrainer(self.model, self.adapter, self.method, self.collator, cfg.training, acc,
                                   batching=self.batching, step_log=self.dir.root / "train_steps.jsonl")
        card = None
        if self.main and not self.evaluation_only:
            env = environment(cfg, acc, self.batching)
            card = self._protocol_card(backbone, env)  # a resumed run whose data or backbone changed stops here
        # written only once everything above succeeded: a failed start leaves no run directory behind
        if self.main and (not self.evaluation_only or self.out is not self.dir):
            atomic_write_text(self.out.config, resolved)
        if card is not None:
            atomic_write_json(self.dir.env, _env_record(self.dir.env, env, self.names, str(self.benchmark.name)))
            atomic_write_json(self.dir.root / PROTOCOL_FILE, card)
        if acc.log_with:
            acc.init_trackers("dymoe", config=_flat(cfg.to_dict()))

    def train_set(self, task: TaskSpec) -> list:
        if task.name not in self._train_sets:
            b = self.cfg.benchmark
            # skip_invalid also decodes every image here, so that one that does not decode is skipped (not a crash
            # in the middle of the task)
            samples = load_train(task, instruction_type=self.benchmark.instruction_type,
                                 seed=self.cfg.training.seed, skip_invalid=b.skip_invalid,
                                 decode_images=b.skip_invalid)
            skipped = getattr(samples, "skipped", [])
            if skipped and self.main:
                rows = ", ".join(f"row {s.index} ({s.reason})" for s in skipped[:5])
                print(f"[{task.name}] skipped {len(skipped)} invalid training rows: {rows}"
                      f"{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)
            if not samples:
                why = f" (all {len(skipped)} rows are invalid)" if skipped else ""
                files = ", ".join(str(f.path) for f in task.train_files)
                raise DataError(f"{files}: task {task.name!r} has no training samples{why}; it would train 0 steps")
            samples = self._text_only(list(samples), task, "training")
            self._train_sets[task.name] = _subsample(samples, b.max_train_samples, self.cfg.training.seed)
        return self._train_sets[task.name]

    def initial_set(self, spec: dict) -> tuple[list, list[str]]:
        """The samples of a method's initial data set (:meth:`~dymoe.methods.base.Method.initial_data`: a
        benchmark task's ``train`` entry and ``image_root``, relative to the benchmark's data root) and its files."""
        task = initial_task(spec, self.benchmark.data_root, f"method {self.method.name!r} initial data")
        b = self.cfg.benchmark
        samples = load_train(task, instruction_type=self.benchmark.instruction_type, seed=self.cfg.training.seed,
                             skip_invalid=b.skip_invalid, decode_images=b.skip_invalid)
        files = [str(f.path) for f in task.train_files]
        if not samples:
            raise DataError(f"{', '.join(files)}: the initial data set has no training samples")
        return self._text_only(list(samples), task, "training"), files

    def _text_only(self, samples: list, task: TaskSpec, split: str) -> list:
        """A causal-LM backbone takes no images: refused or skipped by ``backbone.image_samples``."""
        if not is_text_only(self.processor):
            return samples
        return text_only_samples(samples, task=task.name, policy=self.cfg.backbone.image_samples, split=split)

    def test_set(self, task: TaskSpec, eval_set: EvalSet | None = None) -> list:
        """The questions of one evaluation set of ``task`` (default: its first), capped by ``max_eval_samples``."""
        es = eval_set or task.eval_sets[0]
        key = (task.name, es.name)
        if key not in self._test_sets:
            samples = load_eval_set(task, es, instruction_type=self.benchmark.instruction_type, seed=0)
            if not samples:
                which = f" (evaluation set {es.name!r})" if len(task.eval_sets) > 1 else ""
                raise DataError(f"{es.path}: task {task.name!r} has no test questions{which}; an empty test set would "
                                "score 0 and pull down every average")
            samples = self._text_only(samples, task, "test")
            # the same subset for every method and seed, so runs stay comparable
            self._test_sets[key] = _subsample(samples, self.cfg.benchmark.max_eval_samples, 0)
        return self._test_sets[key]

    def annotations(self, task: TaskSpec, scorer: str, eval_set: EvalSet | None = None) -> dict:
        """The scorer's side files, loaded once; restricted to the evaluated subset when evaluation is capped.

        CoIN's ScienceQA scorer divides by ``pid_splits["test"]`` (a missing prediction counts as wrong), so with
        ``benchmark.max_eval_samples`` the split is cut to the evaluated questions, keeping that rule on the subset.
        """
        es = eval_set or task.eval_sets[0]
        key = (task.name, es.name, scorer)
        if key not in self._annotations:
            ann = load_annotations(scorer, es.scorer_annotations)
            if self.cfg.benchmark.max_eval_samples is not None:
                ann = restrict_to_evaluated(ann, [s.question_id for s in self.test_set(task, es)])
            self._annotations[key] = ann
        return self._annotations[key]

    # ------------------------------------------------------------------ the recipe
    def run(self) -> dict:
        """Train and evaluate the whole sequence (resuming what is already there); returns the metrics."""
        self.setup()
        try:
            done = self.dir.completed_tasks(self.names)
            rows = self.dir.matrix_rows(self.names)
            if len(rows) > done:
                raise DymoeError(f"{self.dir.matrix} has {len(rows)} rows but only {done} task checkpoints exist")
            if done:
                self._load_checkpoint(done)
            # the log of finished tasks lives in their checkpoints: kept even when a run was killed before it
            # wrote metrics.json (during the evaluation after a task)
            train_log = self.dir.train_log(self.names, done)
            self._general_pretrained(done)
            written = False
            for k, task in enumerate(self.tasks):
                info = TaskInfo(index=k, name=task.name, num_tasks=len(self.tasks))
                if k >= done:
                    train_log[task.name] = self.train_task(k, task, info)
                if k >= len(rows):
                    if k < done - 1:
                        raise DymoeError(f"{self.dir.root}: row {k + 1} of the matrix is missing but later tasks "
                                         "are done")
                    rows.append(self.evaluate_seen(k))
                    self._general_final(rows)
                    self.write_results(rows, train_log)
                    written = True
            if rows and not written:
                # nothing left to do: a run killed between writing matrix.json and metrics.json / report.md
                # gets them now (the same content an uninterrupted run wrote); so does the general-ability check
                self._general_final(rows)
                self.write_results(rows, train_log)
            # trackers end here; the process group stays up for the next run in this process (``dymoe reproduce``
            # runs several) and is destroyed at exit (accelerate's end_training would destroy it now)
            for tracker in self.acc.trackers:
                tracker.finish()
            if self.main:
                self.dir.remove_temp_files()
            return self._read_metrics()
        finally:
            self.close()

    def _general_pretrained(self, done: int) -> None:
        """The general-ability check on the pretrained model (``evaluation.general.pretrained``): before task 1
        trains, every wrapped module bypassed; a run that has it already (resuming) reads it back."""
        g = self.general
        if g is None or not g.cfg.pretrained or g.done("pretrained"):
            return
        # only a run whose general/pretrained.json was deleted gets here with tasks done: say what was evaluated
        when = "before task 1" if done == 0 else f"after task {done}, every wrapped module bypassed"
        g.evaluate("pretrained", when=when)

    def _general_final(self, rows: list) -> None:
        """The general-ability check on the final model, once the last row of the matrix is evaluated."""
        g = self.general
        if g is not None and len(rows) == len(self.tasks) and not g.done("final"):
            g.evaluate("final", when=f"after task {len(self.tasks)} ({self.names[-1]})")

    def train_task(self, k: int, task: TaskSpec, info: TaskInfo) -> dict:
        cfg = self.cfg
        samples = list(self.train_set(task))
        past = {t.name: self.train_set(t) for t in self.tasks[:k]} if cfg.replay.samples_per_task else {}
        samples += _replay(past, cfg.replay.samples_per_task, cfg.replay.seed)
        info.train_samples = samples
        info.epochs = float(task.epochs if task.epochs is not None else cfg.training.epochs)
        from accelerate.utils import set_seed

        params_before = parameter_report(self.adapter)["total"]
        # a method's initial phase on its own data set (before task 1's planning), or loaded on resume
        initial = run_initial_phase(self, info) if k == 0 else None
        # the planning phase (methods that have one): run under its own seed, or loaded on resume
        plan = run_planning(self, k, info)
        # seeded per task *before* the method grows anything, so a resumed run initialises new experts identically
        set_seed(cfg.training.seed * 1000 + k)
        n_before = self.adapter.num_parameters()
        reset_peak_memory(self.acc.device)
        self.method.before_task(info)
        n_trainable = self.adapter.num_parameters(trainable_only=True) + sum(
            p.numel() for p in self.method.extra_parameters()
        )
        if self.main:
            print(f"task {k + 1}/{len(self.tasks)} {task.name}: {len(samples)} samples, "
                  f"{n_trainable:,} trainable parameters", file=sys.stderr)
        partial = self.dir.partial(k + 1, task.name) if cfg.training.save_every_steps else None
        if partial is not None and self.main:
            damaged = self.dir.check_partial(k + 1, task.name)
            if damaged:
                print(f"the step checkpoint of task {k + 1} is damaged and was removed ({damaged}); the task "
                      "restarts from its beginning (same result: seeds are per task)", file=sys.stderr)
        self.acc.wait_for_everyone()
        with writing(partial or self.dir.root, "step checkpoint", errnos=WRITE_ERRNOS):
            result = self.trainer.train(info, samples, seed=cfg.training.seed * 1000 + k, step_dir=partial,
                                        epochs=task.epochs)  # per-task epochs (None: training.epochs)
        self.method.after_task(info, self.trainer)
        log = {**result.__dict__, "trainable_params": n_trainable, **({"plan": plan} if plan is not None else {}),
               **({"initial": initial} if initial is not None else {}),
               "parameters": task_parameters(self.adapter, params_before)}
        if self.main:
            log["cost"] = task_cost(result, params_before=n_before, params_after=self.adapter.num_parameters(),
                                    trainable=n_trainable, peak=peak_memory(self.acc.device),
                                    model_size=model_bytes(self.model), inference=self._inference_cost())
        if self.main:
            with writing(self.dir.checkpoint(k + 1, task.name), "checkpoint"):  # safetensors' I/O errors too
                save_adapter(self.adapter, self.dir.checkpoint(k + 1, task.name),
                             metadata={"task": task.name, "task_index": k + 1, "method": self.method.describe(),
                                       "trainable_params": n_trainable, "train": log},
                             method_state=self.method.checkpoint_state())
            self.dir.clear_partial(k + 1, task.name)
        self.acc.wait_for_everyone()
        return log

    def _load_checkpoint(self, k: int) -> None:
        ckpt = self.dir.checkpoint(k, self.names[k - 1])
        try:
            load_adapter_into(self.adapter, ckpt)
            self.method.load_checkpoint_state(load_method_state(ckpt))
        except CheckpointError as err:
            raise CheckpointError(f"{err}. The checkpoint after task {k} of {self.dir.root} is damaged: restore it, "
                                  "or start again in a new --output directory") from None
        self.adapter.model.to(self.acc.device)

    def scorer_name(self, task: TaskSpec, eval_set: EvalSet | None = None) -> str:
        """The scorer of an evaluation set (default: the first): ``evaluation.scorers`` overrides it by
        ``"task/set"`` or, for the task's first set, by task name."""
        es = eval_set or task.eval_sets[0]
        overrides = self.cfg.evaluation.scorers
        name = overrides.get(f"{task.name}/{es.name}")
        if name is None:
            name = overrides.get(task.name, es.scorer) if es is task.eval_sets[0] else es.scorer
        return f"{name}-strict" if self.cfg.evaluation.scorer_variant == "strict" and not name.endswith("-strict") else name

    def _stored_predictions(self, path: Path, samples: list) -> list[dict]:
        """Predictions written by an earlier (killed) process, checked against the questions they answer."""
        return read_predictions(path, samples)

    stored_predictions = _stored_predictions

    def evaluate_seen(self, k: int, *, regenerate: bool = False) -> list[float]:
        """Row k of the matrix (0-based: after task k + 1): every evaluation set of the tasks seen so far (or of
        every task, ``evaluation.tasks: all``), for the main evaluation and each variant (see
        :mod:`dymoe.runner.evaluation`); the row's scores go to ``scores/after_<k+1>.json``, the main cells are
        returned."""
        rows = evaluate_row(self, k, regenerate=regenerate)
        save_scores(self, k, rows)
        row = rows[""].cells
        if self.main:
            shown = [self.names[j] for j in evaluated_tasks(self, k)]
            cells = "  ".join(f"{n}={a:.2f}" for n, a in zip(shown, row))
            print(f"after task {k + 1}/{len(self.tasks)} ({self.names[k]}): {cells}", file=sys.stderr)
        self.acc.wait_for_everyone()
        return row

    def reevaluate(self, after: int | None = None) -> list[list[float]]:
        """Regenerate and rescore rows from the saved checkpoints (all finished tasks, or only ``after``).

        The rows the results directory does not hold yet up to ``after`` are evaluated too (a matrix has no
        gaps): the first ``dymoe eval --after-task K`` with other settings evaluates rows 1..K.
        """
        self.setup()
        try:
            done = self.dir.completed_tasks(self.names)
            if done == 0:
                raise DymoeError(f"{self.dir.root}: no finished task checkpoint to evaluate")
            if after is not None and not 1 <= after <= done:
                raise DymoeError(f"--after-task {after}: the run has checkpoints for tasks 1..{done}")
            rows = self.out.matrix_rows(self.names)
            ks = list(range(1, done + 1)) if after is None else [after]
            ks = sorted(set(ks) | set(range(len(rows) + 1, max(ks))))  # a matrix has no gaps
            for k in ks:
                self._load_checkpoint(k)
                row = self.evaluate_seen(k - 1, regenerate=True)
                rows = rows[: k - 1] + [row] + rows[k:] if len(rows) >= k else rows + [row]
            self.write_results(rows, self.dir.train_log(self.names, done))
            if self.main:
                self.dir.remove_temp_files()
            return rows
        finally:
            self.close()

    def _inference_cost(self) -> dict:
        """FLOPs per generated token and generation throughput on the probe batch (see :mod:`dymoe.runner.cost`);
        a failure is recorded in the cost, not raised (the run's results do not depend on it)."""
        from dymoe.runner.trained import eval_routing

        ev = self.cfg.evaluation
        probe = self.test_set(self.tasks[0])[:PROBE_QUESTIONS]
        try:
            with eval_routing(self.method, self.adapter) as hook:
                return inference_cost(self.model, self.processor, self.adapter, probe, max_length=ev.max_length,
                                      new_tokens=ev.max_new_tokens, batch_hook=hook)
        except Exception as err:  # noqa: BLE001 - cost is informative: say why it is missing, keep the run going
            log.warning("inference cost not measured: %s", err)
            return {"inference_error": f"{type(err).__name__}: {err}"}

    def _format_forgetting(self, names: list[str], rows: list[list[float]]) -> dict:
        """Every cell rescored from its predictions file with the reference and strict scorers and the
        form-forgiving knowledge score (:mod:`dymoe.eval.forgetting`); writes ``format_forgetting.json`` and
        returns its summary for ``metrics.json``."""
        cells = {}
        for k in range(len(rows)):
            for i, task in enumerate(self.tasks[: k + 1]):
                # tasks with one evaluation set (a cell of several sets is a mean of their headlines: not rescored)
                path = self.out.predictions(task.name, k + 1)
                scorer = self.scorer_name(task)
                if len(task.eval_sets) != 1 or not path.is_file() or variants(scorer) is None:
                    cells[(k, i)] = None
                    continue
                st = path.stat()
                key = (str(path), scorer, st.st_size, st.st_mtime_ns)  # a cell is scored once per process
                if key not in self._cells:
                    samples = self.test_set(task)
                    self._cells[key] = score_cell(scorer, read_predictions(path, samples),
                                                  [s.reference for s in samples],
                                                  self.annotations(task, base_name(scorer)))
                cells[(k, i)] = self._cells[key]
        data = format_forgetting(names, cells)
        atomic_write_json(self.out.root / FORMAT_FORGETTING_FILE, data)
        return {"format_forgetting": data["summary"]}

    def _protocol_card(self, backbone: str, env: dict) -> dict:
        """The run's protocol card; resuming, the stored card's protocol fields must not have changed (the same
        config with other task files or another backbone would mix two protocols in one matrix)."""
        card = build_card(self.cfg, benchmark=self.benchmark, backbone_folder=backbone, adapter=self.adapter,
                          batching=self.batching, accelerator=self.acc, environment=env,
                          eval_questions={t.name: len(self.test_set(t)) for t in self.tasks},
                          scorers={t.name: self.scorer_name(t) for t in self.tasks})
        old = read_card(self.dir.root)
        if old is not None and self.dir.has_progress():
            differ, _ = differing_fields([protocol_key(old), protocol_key(card)])
            if differ:
                what = "; ".join(f"{f}: {short(protocol_key(old)[f])} → {short(protocol_key(card)[f])}" for f in differ)
                raise DataError(f"{self.dir.root / PROTOCOL_FILE}: this run was started under another protocol "
                                f"({what}); resuming would mix two protocols in one matrix. Restore the original "
                                "files, or start again in a new --output directory")
            # the trainable counts of the tasks already done
            card["adapter"]["trainable_per_task"] = old.get("adapter", {}).get("trainable_per_task", {})
        return card

    def _update_protocol(self, train_log: dict) -> None:
        card = read_card(self.dir.root)
        if card is None:
            return
        per_task = {n: train_log[n]["trainable_params"] for n in self.names if "trainable_params" in train_log.get(n, {})}
        if card.get("adapter", {}).get("trainable_per_task") != per_task:
            card.setdefault("adapter", {})["trainable_per_task"] = per_task
            atomic_write_json(self.dir.root / PROTOCOL_FILE, card)

    def write_results(self, rows: list[list[float]], train_log: dict) -> None:
        if not self.main:
            return
        full = self.cfg.evaluation.tasks == "all"
        names = self.names if full else self.names[: len(rows)]
        save_matrix(self.out.matrix, names, rows, full=full, max_cell=_max_cell(rows))
        lower = [r[: j + 1] for j, r in enumerate(rows)]  # the seen-tasks part (CoIN's metrics)
        metrics = {
            "method": self.cfg.method_name,
            "label": self.cfg.display_label,
            "seed": self.cfg.training.seed,
            "trainable_params": train_log.get(self.names[len(rows) - 1], {}).get("trainable_params", 0),
            "total_adapter_params": self.adapter.num_parameters(),
            **summarize(lower),
            "final": dict(zip(names, rows[-1])),
            "complete": len(rows) == len(self.names),
            "train": {n: train_log[n] for n in self.names if n in train_log},
            "cost": {n: train_log[n]["cost"] for n in self.names if "cost" in train_log.get(n, {})},
        }
        metrics.update(self._evaluation_results(rows))
        if getattr(self, "general", None) is not None:
            from dymoe.runner.general import read_general

            metrics["general"] = read_general(self.out.root)
        metrics.update(self._format_forgetting(names, rows))
        atomic_write_json(self.out.metrics, metrics)
        self._update_protocol(train_log)
        try:
            from dymoe.runner.report import write_report

            write_report(self.out.root)
        except ImportError:  # pragma: no cover - report module missing in a partial install
            pass

    def _evaluation_results(self, rows: list[list[float]]) -> dict:
        """The ``metrics.json`` entries beyond CoIN's (from ``scores/after_<k>.json``): the run's metric
        definition, every evaluation set's numbers per row, each variant's matrix and summary and each variant's
        task-locator report per row (only what applies: a CoIN run without variants or locator adds just
        ``metric``)."""
        n_rows, full = len(rows), self.cfg.evaluation.tasks == "all"
        scores = [load_scores(self.out, k) or {} for k in range(1, n_rows + 1)]
        variants = variants_of(self.method, self.cfg.evaluation.variants)
        out: dict = {}
        sets = {f"after_task_{k + 1}": sc["variants"][""]["sets"] for k, sc in enumerate(scores)
                if sc.get("variants", {}).get("")}
        if any(len(t.eval_sets) > 1 or t.eval_sets[0].format != "coin" for t in self.tasks) or any(
                s for row in sets.values() for task in row.values() for s in task.values() if "metrics" in s):
            out["eval_sets"] = {"combine": COMBINE_RULE, **sets}
        matrices = {"": rows}
        for v in variants[1:]:
            vrows = [sc.get("variants", {}).get(v, {}).get("cells") for sc in scores]
            if all(r is not None for r in vrows):
                matrices[v] = vrows
                names = self.names if full else self.names[:n_rows]
                save_matrix(variant_dir(self.out, v).matrix, names, vrows, full=full, max_cell=_max_cell(vrows))
        out["metric"] = {"definition": self.cfg.evaluation.metric,
                         **metric_summary(self.cfg.evaluation.metric, rows, matrices, self.method)}
        if len(matrices) > 1:
            out["variants"] = {v: {"matrix": m, **summarize([r[: j + 1] for j, r in enumerate(m)]),
                                   "metric": metric_summary(self.cfg.evaluation.metric, m, matrices, self.method)}
                               for v, m in matrices.items() if v}
            for v, entry in out["variants"].items():  # a variant's own method measurements per row, if any
                own = {f"after_task_{k + 1}": sc["variants"][v]["method_eval"] for k, sc in enumerate(scores)
                       if sc.get("variants", {}).get(v, {}).get("method_eval")}
                if own:
                    entry["method_eval"] = own
        locators = {}
        for k, sc in enumerate(scores):
            for v, vr in sc.get("variants", {}).items():
                if vr.get("locator"):
                    locators.setdefault(v or "main", {})[f"after_task_{k + 1}"] = vr["locator"]
        if locators:
            out["locator"] = {"name": self.method.locator_name, **locators}
        method_eval = {f"after_task_{k + 1}": sc["variants"][""]["method_eval"] for k, sc in enumerate(scores)
                       if sc.get("variants", {}).get("", {}).get("method_eval")}
        if method_eval:  # a method's own measurements per row (e.g. DyMoE's task router, issue 14's keys)
            out["method_eval"] = method_eval
        return out

    def _read_metrics(self) -> dict:
        try:
            return json.loads(self.out.metrics.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}


def _check_train_file(task: TaskSpec) -> None:
    """Before anything trains: the task's training files exist and are not empty (the rows themselves are checked
    when the task starts; a file of a few KiB is read whole here)."""
    for file in task.train_files:
        path = file.path
        if not path.is_file():
            read_json_rows(path)  # the DataError that names what is wrong (missing, a directory, ...)
        if path.stat().st_size < 4096 and not read_json_rows(path):
            raise DataError(f"{path}: task {task.name!r} has no training rows; it would train 0 steps")


def task_parameters(adapter, before: int) -> dict:
    """The adapter's parameter accounting after a task (:func:`dymoe.injection.accounting.parameter_report`):
    ``total``, ``added`` (since before the task's planning and growth), ``by_group``, ``by_stream``,
    ``activated_per_token`` and ``activated_by_stream`` (nominal: each router's top-K / group, not measured)."""
    rep = parameter_report(adapter)
    return {"total": rep["total"], "added": rep["total"] - before, "trainable": rep["trainable"],
            "by_group": {str(g): n for g, n in rep["by_group"].items()}, "by_stream": rep["by_stream"],
            "activated_per_token": rep["activated_per_token"], "activated_by_stream": rep["activated_by_stream"]}


def _max_cell(rows: list[list[float]]) -> float | None:
    """100 (percentages) unless a cell is above it (CIDEr x 100): then no upper bound is stored."""
    return None if any(c > 100.0 for r in rows for c in r) else 100.0


def metric_summary(definition: str, rows: list[list[float]], matrices: dict[str, list], method) -> dict:
    """The run's metric definition over a matrix (``rows``: lower-triangular or full): ``coin`` and ``cmoe`` read
    the seen-tasks part; ``cmoe`` takes Immediate from the method's ``immediate_variant`` when it has one (CMoE's
    oracle router), else the diagonal; ``dmole`` needs the full matrix."""
    lower = [r[: j + 1] for j, r in enumerate(rows)]
    if definition == "dmole":
        if len(rows[0]) != len(rows[-1]) or len(rows) != len(rows[0]):
            return {"note": "D-MoLE's AVG/Last/BWT need the full N x N matrix of a complete run"}
        return METRICS.get("dmole")(rows)
    if definition == "cmoe":
        imm_from = getattr(method, "immediate_variant", None)
        imm = None
        if imm_from and imm_from in matrices:
            m = matrices[imm_from]
            imm = [m[i][i] for i in range(len(m))]
        return {**METRICS.get("cmoe")(lower, immediate=imm), "immediate_from": imm_from if imm else "diagonal"}
    return METRICS.get(definition)(lower)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def run(cfg: RunConfig, output: str | Path) -> dict:
    """Run (or resume) a continual experiment; returns the metrics dict (also in ``output/metrics.json``).

    A write that fails (full disk, read-only or unwritable output) stops the run with an :class:`OutputError`
    that says so; every file written until then is complete, and the same command resumes once it is fixed.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return ContinualRun(cfg, output).run()
    except OutputError as err:
        raise OutputError(f"{err}. {RESUME_HINT.format(root=output)}") from None
    except OSError as err:
        inside = err.filename is None or Path(os.path.abspath(err.filename)).is_relative_to(Path(output).absolute())
        if err.errno not in WRITE_ERRNOS or not inside:
            raise
        where = f" {err.filename}" if err.filename else ""
        raise OutputError(f"cannot write{where}: {describe_os_error(err)}. {RESUME_HINT.format(root=output)}") from None
    except torch.cuda.OutOfMemoryError:
        raise DymoeError(
            "CUDA out of memory. Lower training.batch_size (with training.global_batch_size set, the accumulation "
            "grows to keep the global batch), "
            "set training.gradient_checkpointing=true, or lower evaluation.batch_size."
        ) from None
