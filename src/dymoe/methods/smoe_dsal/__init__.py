"""SMoE with AT-Router and DSAL (smoe-dsal.md; issue 20): domain-specific SMoE modules of FFN experts, one per
domain in every FFN of the language model, the module of each layer picked per instance by the lowest DSAL.

- :mod:`.functional`: the virtual expert, soft labels, the efficient DSAL (and its naive oracle), L_Bal and L4;
- :mod:`.config`: the options (the paper's settings; ablations and selection rules as options);
- :mod:`.method`: the plugin (growth per domain, the losses from routing events, per-layer DSAL selection at
  prefill reused while decoding, identification accuracy).

The layer itself is :class:`~dymoe.layers.moe_ffn.MoEFFN` (issue 15: the AT-Router, Eqs. 5–6, 8, 11).
"""

from dymoe.methods.smoe_dsal.config import SMoEDSALOptions
from dymoe.methods.smoe_dsal.method import SMoEDSAL

__all__ = ["SMoEDSAL", "SMoEDSALOptions"]
