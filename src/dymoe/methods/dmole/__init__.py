"""D-MoLE (dmole.md; issue 19): not built yet, and not registered as a method.

The foundation it will stand on (issue 15):

- LoRA experts in the language model and the vision encoder: two adapter sites (``scope: vision`` for the CLIP
  tower, stream ``vision``), groups added only in the allocated slots (``add_group(..., modules=[...])``);
- binary gates, active experts summed: router ``none`` with a per-sample ``context.group_mask``, which reaches the
  vision tower's rows through ``context.image_rows`` (set by the injection hook);
- zero-cost proxy and autoencoder features on the frozen backbone: ``context.use(bypass=True)``;
- the 48-slot budget per stream: :meth:`~dymoe.injection.adapter.ExpertAdapter.parameter_report` (``by_stream``).
"""
