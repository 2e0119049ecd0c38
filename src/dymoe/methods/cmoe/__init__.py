"""LLaVA-CMoE (cmoe.md; issue 18): probe-guided knowledge extension (PGKE) and the probabilistic task locator
(PTL) on MoE-LoRA experts of the FFN with a per-task router bank.

- :mod:`.config`: the options (the paper's settings, proposed values where it is silent);
- :mod:`.functional`: Act, thresholds, the expansion decision, the probe split, PTL's z-scored argmax;
- :mod:`.vae`: the task-wise VAE and its log-space reconstruction probability;
- :mod:`.method`: the plugin (planning phase = PGKE + the VAE, growth, per-sample router choice, variants).
"""

from dymoe.methods.cmoe.config import CMoEOptions
from dymoe.methods.cmoe.method import CMoE

__all__ = ["CMoE", "CMoEOptions"]
