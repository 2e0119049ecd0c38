"""D-MoLE (dmole.md; issue 19): zero-cost-proxy layer allocation, the inter-modal budget split and the autoencoder
task router, on LoRA experts in the language model and the vision encoder.

- :mod:`.config`: the options (the paper's settings; open values as documented options);
- :mod:`.allocation`: slot scores → modality budgets → top-B_M slots → the cumulative architecture (pure);
- :mod:`.router`: the per-task autoencoder, thresholds and the gates (pure);
- :mod:`.features`: the pretrained backbone's measurements (the proxy's gradient norms, the router feature z);
- :mod:`.method`: the plugin (planning phase, growth, per-batch binary gates).
"""

from dymoe.methods.dmole.config import DMoLEOptions
from dymoe.methods.dmole.method import DMoLE

__all__ = ["DMoLE", "DMoLEOptions"]
