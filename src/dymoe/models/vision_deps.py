"""What the processors of some VLM families need beyond transformers: the optional ``vlm`` extra.

* **torchvision**: transformers builds a video processor only with torchvision, and the processor classes of
  Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, InternVL and SmolVLM hold one (transformers type-checks every
  sub-processor when a processor is built), so they cannot even be loaded without it. Their *image* processors do
  not need it: dymoe always asks for the PIL backend (:data:`IMAGE_BACKEND`), so pixels do not depend on whether
  torchvision is installed.
* **num2words**: SmolVLM's processor imports it.

Install with ``pip install -e ".[vlm]"``, with a torchvision built for your torch (``torch==2.13.0`` ↔
``torchvision==0.28.0``). PyPI's Linux torchvision wheels are CUDA builds; beside a *CPU* build of torch (the one
``make`` installs on a machine without CUDA) their compiled ops cannot load, and ``import torchvision`` then
fails in two fake-kernel registrations (``torchvision::nms``/``qnms``) that, unlike its other ops, are not
guarded by torchvision's own "ops loaded?" check. :func:`prepare_torchvision` detects that case before
torchvision is imported and declares those two operator schemas without kernels, so the import completes with
torchvision's own "no compiled ops" state: its pure-PyTorch transforms (all transformers' processors use) work,
and a compiled op (``nms``, ``roi_align``...) raises torchvision's own error. Nothing is patched. With a CPU
torch from PyTorch's CPU index, install torchvision from the same index and none of this is needed.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys

from dymoe.errors import DymoeError

__all__ = ["IMAGE_BACKEND", "NEEDS_NUM2WORDS", "NEEDS_TORCHVISION", "VLM_INSTALL_HINT", "MissingDependency",
           "prepare_torchvision", "require_vision_deps"]

log = logging.getLogger(__name__)

IMAGE_BACKEND = "pil"
VLM_INSTALL_HINT = ('install the optional "vlm" extra: pip install -e ".[vlm]" with a torchvision matching your '
                    'torch (torch 2.13.0 -> torchvision==0.28.0); see the README, section "Other model families"')
# model types whose processor holds a video processor (needs torchvision) / imports num2words
NEEDS_TORCHVISION = frozenset({"llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "smolvlm"})
NEEDS_NUM2WORDS = frozenset({"smolvlm"})

# The two registrations torchvision's _meta_registrations makes unconditionally (torchvision 0.2x).
_UNGUARDED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared = []  # keeps the torch.library fragment alive


class MissingDependency(DymoeError):
    """A backbone's processor needs a package of the ``vlm`` extra that is not installed."""


def _torchvision_ops_load(package_dir: str) -> bool:
    """Whether torchvision's compiled extension loads against the installed torch."""
    import torch

    libs = glob.glob(os.path.join(package_dir, "_C.*")) + glob.glob(os.path.join(package_dir, "_C*.so"))
    for lib in libs:
        try:
            torch.ops.load_library(lib)
            return True
        except (OSError, RuntimeError):
            continue
    return False


def prepare_torchvision() -> bool:
    """Make an installed torchvision importable; True if torchvision is installed.

    Only acts when torchvision is installed, not yet imported, and its compiled ops do not load against this torch
    (a CUDA build beside a CPU torch): then the two operator schemas its import registers fake kernels for are
    declared, without kernels (see the module docstring). Idempotent.
    """
    if "torchvision" in sys.modules:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    if _declared or _torchvision_ops_load(list(spec.submodule_search_locations)[0]):
        return True
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _UNGUARDED_OPS:
        name = schema.split("(", 1)[0]
        if not hasattr(torch.ops.torchvision, name):
            lib.define(schema)
    _declared.append(lib)
    log.info("torchvision's compiled ops do not load with torch %s (a CUDA torchvision beside a CPU torch?): "
             "using its pure-PyTorch transforms only", torch.__version__)
    return True


def require_vision_deps(model_type: str | None) -> None:
    """Check (and prepare) what the processor of ``model_type`` needs; a clear error with the install hint if not.

    Raises:
        MissingDependency: torchvision or num2words is needed and missing.
    """
    have_torchvision = prepare_torchvision()
    if model_type in NEEDS_TORCHVISION and not have_torchvision:
        raise MissingDependency(
            f"the {model_type} processor needs torchvision (transformers builds its video processor only with "
            f"torchvision), which is not installed; {VLM_INSTALL_HINT}")
    if model_type in NEEDS_NUM2WORDS and importlib.util.find_spec("num2words") is None:
        raise MissingDependency(f"the {model_type} processor needs num2words, which is not installed; "
                                f"{VLM_INSTALL_HINT}")
