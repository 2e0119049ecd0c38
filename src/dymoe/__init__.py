"""dymoe: multimodal continual instruction tuning with growable mixtures of LoRA experts.

Reading order for newcomers: ``layers/functional.py`` (the fused op) → ``layers/moe_lora.py`` (the layer) →
``injection/inject.py`` (model surgery) → ``methods/base.py`` → ``runner/continual.py``.
"""

__version__ = "0.1.0"
