"""Typed run configuration, loaded from YAML with ``--set key.sub=value`` overrides.

Every section is a dataclass whose fields are checked on load: an unknown key or a value of the wrong type or
outside its allowed set is a :class:`ConfigError` naming the dotted key and what is allowed. The method's own
options (``method.*`` besides ``name``) are validated by the method's ``Options`` dataclass
(:mod:`dymoe.methods`). The resolved config is written into the run directory as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from dymoe.errors import ConfigError
from dymoe.injection.inject import AdapterConfig
from dymoe.io import read_yaml_mapping


@dataclass
class BackboneConfig:
    """The frozen base model.

    Attributes:
        path: local folder of a Hugging Face model (a hub id works only with ``HF_HUB_OFFLINE=0``). A relative path is
            relative to the config file's directory if it exists there, else to the working directory.
        dtype: ``auto`` = bfloat16 on CUDA, float32 on CPU.
        attn_implementation: passed to ``from_pretrained`` (``sdpa``, ``eager``, ``flash_attention_2``).
        trust_remote_code: off unless asked for.
        image_samples: what a text-only backbone (a causal LM) does with samples that have an image: ``error``
            stops, naming the task; ``skip`` leaves them out of training and evaluation (counted per task).
            Ignored for vision-language backbones.
    """

    path: str = ""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    image_samples: Literal["error", "skip"] = "error"


@dataclass
class BenchmarkConfig:
    """Which tasks, in which order.

    Attributes:
        file: benchmark YAML (``configs/benchmarks/coin.yaml``, a mini-CoIN ``benchmark.yaml``); ``minicoin`` builds
            or reuses the embedded mini-CoIN (scale from ``minicoin_scale``), ``minidomains`` the embedded miniature
            of SMoE's Medicine -> Chart -> Math (:mod:`dymoe.data.minidomains`, the same scale names).
        data_root: overrides the YAML's data_root.
        order: a named order (``origin``, ``reverse``, ``alphabet``) or an explicit list of task names.
        instruction_type: ``origin``, ``diverse`` or ``10type``; None = the benchmark file's.
        max_train_samples / max_eval_samples: per-task caps (seeded subsample), None = all.
        skip_invalid: skip invalid training rows (reported) instead of stopping; every training image is then
            decoded when its task's data is loaded, so that an image that does not decode is skipped too.
    """

    file: str = "minicoin"
    data_root: str | None = None
    order: str | list[str] | None = None
    instruction_type: Literal["origin", "diverse", "10type"] | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    skip_invalid: bool = False
    minicoin_scale: Literal["small", "default", "large"] = "default"


@dataclass
class TrainingConfig:
    """Optimisation per task (defaults: DyMoE/CoIN, dymoe.md §8: AdamW, lr 2e-4, cosine, warmup 0.03, 1 epoch).

    Attributes:
        batch_size: per-device micro-batch (samples in one forward on one process).
        global_batch_size: samples per optimizer step over all processes and accumulation steps (the papers state
            this: 128 for CoIN). Gradient accumulation is derived as ``global_batch_size / (batch_size ×
            processes)``, so one config trains the same model on 1, 4 or 8 GPUs; a global batch that does not divide
            is an error naming the three numbers. None = ``batch_size × grad_accum × processes``.
        grad_accum: micro-batches per process per optimizer step; None = derived from ``global_batch_size`` (or 1).
            Set both only if they agree.
        schedule: ``cosine``, ``linear`` or ``constant`` (after warmup).
        group_by_length: batches of similar length (fewer pad tokens), in a seeded order.
        save_every_steps: 0 = checkpoint only at task ends; N = also every N optimizer steps inside a task
            (restarting resumes from there).
        max_grad_norm: gradient clipping (0 = off).
    """

    epochs: float = 1.0
    batch_size: int = 16
    global_batch_size: int | None = None
    grad_accum: int | None = None
    lr: float = 2e-4
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 2048
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    seed: int = 0
    save_every_steps: int = 0
    num_workers: int = 0
    log_every: int = 10


@dataclass
class GeneralBenchmark:
    """One benchmark of the general-ability check after the last task (:mod:`dymoe.runner.general`).

    Attributes:
        file: a benchmark YAML (every task's evaluation sets with their scorers, formats and generation lengths, as
            in ``configs/benchmarks/``; ``train`` may be left out) or one test file (``.json`` / ``.jsonl``, rows of
            ``format``). A relative path is relative to the run config's folder if it exists there.
        scorer: the scorer of a test file (required for one); for a YAML, None keeps each set's own.
        format: a test file's format (``coin`` = CoIN's test rows; ``dmole-vqa``, ``dmole-choice``, ...).
        name: the label in metrics.json and the report (default: the file's stem).
        image_root: a test file's image folder (default: the file's folder); ignored for a YAML.
        max_new_tokens: a test file's generation length (None = ``evaluation.max_new_tokens``).
        max_samples: per evaluation set, a seeded subset of this many questions (None = all).
        aggregate: the benchmark's number over its tasks: ``mean`` or ``sum`` (MME and POPE report sums).
    """

    file: str = ""
    scorer: str | None = None
    format: str = "coin"
    name: str | None = None
    image_root: str | None = None
    max_new_tokens: int | None = None
    max_samples: int | None = None
    aggregate: Literal["mean", "sum"] = "mean"


@dataclass
class GeneralConfig:
    """The general-ability check after the last task (D-MoLE's Table 3: MME, MMMU, POPE): every evaluation set of
    ``benchmarks`` is evaluated on the final model (the method's evaluation routing) and, with ``pretrained``, on
    the pretrained model (every expert layer bypassed, before task 1 trains); the scores go to ``general/*.json``,
    ``metrics.json`` (``general``) and ``report.md``. Empty = off (the default).

    Attributes:
        benchmarks: benchmark YAMLs or test files: a path, or a mapping with the keys of :class:`GeneralBenchmark`.
        pretrained: also evaluate the pretrained model (the comparison row of Table 3).
    """

    benchmarks: list[str | GeneralBenchmark] = field(default_factory=list)
    pretrained: bool = True


@dataclass
class EvaluationConfig:
    """Evaluation after each task (see :mod:`dymoe.runner.evaluation`).

    Attributes:
        max_new_tokens: generation length of an evaluation set that does not set its own.
        scorer_variant: ``reference`` (CoIN's scorers, quirks included: comparable with the papers) or ``strict``.
        scorers: per-task overrides ``{task name: scorer name}`` (of the task's first evaluation set) or
            ``{"task/set": scorer name}`` for one set of a task with several.
        tasks: ``seen`` evaluates tasks 1..k after task k (lower-triangular matrix, CoIN); ``all`` evaluates every
            task after every stage, unseen ones included (full N × N matrix, D-MoLE's protocol).
        metric: the metric definition of the run (a key of :data:`dymoe.eval.metrics.METRICS`: ``coin`` MFT/MFN/
            MAA/BWT, ``cmoe`` Immediate/Last/BWT, ``dmole`` AVG/Last/BWT, which needs ``tasks: all``), reported in
            ``metrics.json``, ``report.md`` and ``dymoe compare``.
        variants: the method's evaluation variants to run (each with its own matrix); None = every one it declares.
        general: the general-ability check after the last task (:class:`GeneralConfig`; off by default).
    """

    batch_size: int = 16
    max_new_tokens: int = 32
    max_length: int = 2048
    scorer_variant: Literal["reference", "strict"] = "reference"
    scorers: dict[str, str] = field(default_factory=dict)
    tasks: Literal["seen", "all"] = "seen"
    metric: Literal["coin", "cmoe", "dmole"] = "coin"
    variants: list[str] | None = None
    general: GeneralConfig = field(default_factory=GeneralConfig)


@dataclass
class ReplayConfig:
    """Experience replay, combinable with any method: ``samples_per_task`` samples of every past task (drawn
    uniformly, seeded) are mixed into each later task's training data (dymoe.md §12.2)."""

    samples_per_task: int = 0
    seed: int = 0


@dataclass
class RunConfig:
    """A whole continual run."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "incmoelora"})
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    label: str | None = None
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", ""))

    @property
    def display_label(self) -> str:
        return self.label or self.method_name


# ---------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (converting int → float where a float is expected)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {list(typing.get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def build_dataclass(cls: type, data: Any, key: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking every key and value (errors name ``key.field``)."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise ConfigError(f"unknown key {where!r}; allowed keys{' under ' + repr(key) if key else ''}: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{key}.{k}" if key else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}" if key and not str(err).startswith(key) else str(err)) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"training.lr=1e-4"`` → (["training", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads "1e-4" as a string; accept numeric strings where they look like numbers
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a raw config mapping (before validation)."""
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply overrides, validate; resolves relative paths against the YAML's folder.

    Everything that can be checked without the model and the data is checked here, before a run writes
    anything: types, ranges, finite numbers, tracker and scorer names (the method and its options: when the run
    is created, :class:`dymoe.runner.continual.ContinualRun`).
    """
    data: dict = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        data = read_yaml_mapping(path, "config file")
        base_dir = path.resolve().parent
    data = apply_overrides(data, overrides or [])
    cfg = build_dataclass(RunConfig, data)
    name = cfg.method.get("name")
    if name is None:
        raise ConfigError("method.name is required (see `dymoe ls` for the known methods)")
    if not isinstance(name, str):
        raise ConfigError(f"method.name must be a method name (a string), got {name!r}; see `dymoe ls`")
    cfg.backbone.path = _resolve(cfg.backbone.path, base_dir)
    if cfg.benchmark.file not in ("minicoin", "minidomains"):
        cfg.benchmark.file = _resolve(cfg.benchmark.file, base_dir)
    if cfg.benchmark.data_root:
        cfg.benchmark.data_root = _resolve(cfg.benchmark.data_root, base_dir)
    general = cfg.evaluation.general
    general.benchmarks = [GeneralBenchmark(file=b) if isinstance(b, str) else b for b in general.benchmarks]
    for b in general.benchmarks:
        b.file = _resolve(b.file, base_dir)
        if b.image_root:
            b.image_root = _resolve(b.image_root, base_dir)
    validate(cfg)
    return cfg


def _resolve(value: str, base_dir: Path) -> str:
    """A relative path that exists beside the config file is taken from there; anything else is left as given
    (relative to the working directory, a hub id, or a ``tiny:`` scheme)."""
    if not value or Path(value).is_absolute() or ":" in value:
        return value
    candidate = base_dir / value
    return str(candidate) if candidate.exists() else value


# the per-task seed ``training.seed * 1000 + k`` goes to numpy, which takes seeds below 2**32 (k < 1000 tasks)
MAX_SEED = (2**32 - 1) // 1000 - 1


def validate(cfg: RunConfig) -> None:
    """Every check that needs neither the model nor the data (:class:`ConfigError` naming the first bad key)."""
    _check_finite(cfg.to_dict(), "")
    _check_ranges(cfg)
    _check_trackers(cfg.trackers)
    from dymoe.eval.scorers import SCORERS

    for task, scorer in cfg.evaluation.scorers.items():
        if scorer not in SCORERS:
            raise ConfigError(f"evaluation.scorers.{task}: unknown scorer {scorer!r}; known: {', '.join(SCORERS)}")
    _check_general(cfg.evaluation.general, SCORERS)
    # the method's name and options are checked by dymoe.methods.build_method (which imports this module), when
    # a run is created: still before anything is written


def _check_general(general: GeneralConfig, scorers) -> None:
    """``evaluation.general``: each entry names an existing file, a test file has a known scorer and format."""
    from dymoe.data.tasks import EVAL_FORMATS

    labels = []
    for i, b in enumerate(general.benchmarks):
        key = f"evaluation.general.benchmarks[{i}]"
        if not isinstance(b, GeneralBenchmark):
            b = GeneralBenchmark(file=b)
        if not b.file:
            raise ConfigError(f"{key}.file: give a benchmark YAML or a test file (.json / .jsonl)")
        path = Path(b.file)
        if not path.is_file():
            raise ConfigError(f"{key}.file: {b.file} is not a file (a benchmark YAML or a test file)")
        yaml_file = path.suffix.lower() in (".yaml", ".yml")
        if not yaml_file and path.suffix.lower() not in (".json", ".jsonl"):
            raise ConfigError(f"{key}.file: {b.file}: expected a benchmark YAML (.yaml / .yml) or a test file "
                              "(.json / .jsonl)")
        if b.scorer is None and not yaml_file:
            raise ConfigError(f"{key}.scorer: the test file {b.file} needs a scorer; known: {', '.join(scorers)}")
        if b.scorer is not None and b.scorer not in scorers:
            raise ConfigError(f"{key}.scorer: unknown scorer {b.scorer!r}; known: {', '.join(scorers)}")
        if b.format not in EVAL_FORMATS:
            raise ConfigError(f"{key}.format: unknown format {b.format!r}; known: {', '.join(EVAL_FORMATS)}")
        for name in ("max_new_tokens", "max_samples"):
            value = getattr(b, name)
            if value is not None and value < 1:
                raise ConfigError(f"{key}.{name} must be >= 1 or null, got {value!r}")
        labels.append(b.name or path.stem)
    dups = sorted({n for n in labels if labels.count(n) > 1})
    if dups:
        raise ConfigError(f"evaluation.general.benchmarks: the labels {dups} repeat; give each entry its own name")


def _check_finite(node: Any, key: str) -> None:
    """NaN and infinity are refused everywhere (a NaN lr or temperature trains garbage without an error)."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_finite(v, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}: {node} is not a finite number")


def _check_trackers(trackers: list[str]) -> None:
    from accelerate.utils import LoggerType

    known = [t.value for t in LoggerType if t.value != "all"]
    for i, name in enumerate(trackers):
        if name != "none" and name not in known:
            raise ConfigError(f"trackers[{i}]: unknown tracker {name!r}; known: {known + ['none']}")


def _check_ranges(cfg: RunConfig) -> None:
    t, ev, b, a = cfg.training, cfg.evaluation, cfg.benchmark, cfg.adapter
    checks = [
        ("training.epochs", t.epochs > 0, "> 0"),
        ("training.batch_size", t.batch_size >= 1, ">= 1"),
        ("training.grad_accum", t.grad_accum is None or t.grad_accum >= 1, ">= 1 or null"),
        ("training.global_batch_size", t.global_batch_size is None or t.global_batch_size >= 1, ">= 1 or null"),
        ("training.lr", t.lr > 0, "> 0"),
        ("training.warmup_ratio", 0 <= t.warmup_ratio < 1, "in [0, 1)"),
        ("training.weight_decay", t.weight_decay >= 0, ">= 0"),
        ("training.max_grad_norm", t.max_grad_norm >= 0, ">= 0 (0 = no clipping)"),
        ("training.max_length", t.max_length >= 8, ">= 8"),
        ("training.seed", 0 <= t.seed <= MAX_SEED,
         f"in [0, {MAX_SEED}] (seed x 1000 + task index is a numpy seed, < 2**32)"),
        ("training.save_every_steps", t.save_every_steps >= 0, ">= 0"),
        ("training.num_workers", t.num_workers >= 0, ">= 0"),
        ("training.log_every", t.log_every >= 1, ">= 1"),
        ("benchmark.max_train_samples", b.max_train_samples is None or b.max_train_samples >= 1,
         ">= 1 or null (all); an empty training set trains nothing"),
        ("benchmark.max_eval_samples", b.max_eval_samples is None or b.max_eval_samples >= 1,
         ">= 1 or null (all); an empty test set would score 0"),
        ("evaluation.batch_size", ev.batch_size >= 1, ">= 1"),
        ("evaluation.max_new_tokens", ev.max_new_tokens >= 1, ">= 1"),
        ("evaluation.max_length", ev.max_length >= 8, ">= 8"),
        ("adapter.alpha", a.alpha is None or a.alpha > 0, "> 0 or null (2 x the bank rank)"),
        ("adapter.dropout", 0 <= a.dropout < 1, "in [0, 1)"),
        ("adapter.cos_scale", a.cos_scale > 0, "> 0"),
        ("adapter.bank_rank", a.bank_rank is None or a.bank_rank >= 1, ">= 1 or null"),
        ("replay.samples_per_task", cfg.replay.samples_per_task >= 0, ">= 0"),
        ("replay.seed", cfg.replay.seed >= 0, ">= 0"),
    ]
    values = {"training": t, "evaluation": ev, "benchmark": b, "adapter": a, "replay": cfg.replay}
    for key, ok, allowed in checks:
        if not ok:
            section, name = key.split(".")
            raise ConfigError(f"{key} must be {allowed}, got {getattr(values[section], name)!r}")
    if cfg.evaluation.metric == "dmole" and cfg.evaluation.tasks != "all":
        raise ConfigError("evaluation.metric=dmole (D-MoLE's Eqs. 16-18) needs the full matrix: set evaluation.tasks=all")


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (the first line says how to run it)."""
    header = "# dymoe run CONFIG.yaml --output RUN_DIR   (resolved config of this run)\n"
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
