"""SMoE with AT-Router and DSAL (smoe-dsal.md; issue 20): not built yet, and not registered as a method.

The foundation it will stand on (issue 15):

- the domain module per FFN: an adapter site ``kind: mlp`` (:class:`~dymoe.layers.moe_ffn.MoEFFN`: N_e SwiGLU
  experts of width d', the AT-Router, k = 0 is the base block exactly); one group per domain;
- DSAL's loss on the layer input: ``context.capture_inputs`` (the input rides on the routing event; stash it,
  compute after the forward) and :meth:`~dymoe.layers.moe_ffn.MoEFFN.group_tensors` for the virtual expert;
- the per-layer, per-instance module choice at prefill, kept while decoding and through recomputation:
  ``context.selector``;
- 208M learnable / 42M activated at 7B: :meth:`~dymoe.injection.adapter.ExpertAdapter.parameter_report` with the
  measured experts per token of :class:`~dymoe.injection.accounting.ActiveExpertMeter`.
"""
