"""dymoe: multimodal continual instruction tuning with growable mixtures of LoRA experts.

Reading order for newcomers: ``layers/functional.py`` (the fused op) → ``layers/moe_lora.py`` (the layer) →
``injection/inject.py`` (model surgery) → ``methods/base.py`` → ``runner/continual.py``.
"""

__version__ = "0.1.0"


def _prepare_torchvision() -> None:
    # Before anything imports transformers: a CUDA torchvision beside a CPU torch must be made importable first
    # (dymoe.models.vision_deps explains why); costs nothing when torchvision is not installed.
    import importlib.util
    import sys

    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is not None:
        from dymoe.models.vision_deps import prepare_torchvision

        prepare_torchvision()


_prepare_torchvision()
