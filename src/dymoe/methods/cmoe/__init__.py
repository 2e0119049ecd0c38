"""LLaVA-CMoE (cmoe.md; issue 18): not built yet, and not registered as a method.

The foundation it will stand on (issue 15):

- MoE-LoRA on the FFN with one router per block shared by gate_proj and up_proj: an adapter site with
  ``targets: [gate_proj, up_proj]`` and ``share_router: block`` (the first projection leads, the others follow);
- the per-task router bank picked per sample by the task locator: ``router_bank: true`` (with
  ``share_router: block`` the leader holds one bank per block),
  :meth:`~dymoe.injection.adapter.ExpertAdapter.open_router` (copies router_{i-1}, random rows for new experts, all
  rows trainable, frozen by ``fold``) and ``context.router_ids`` ``[B]``;
- PGKE's probes and expansion: ``add_group(..., init="mean")`` (the old group's average),
  ``add_group(..., init="copy", sources={module: expert id})`` and
  :meth:`~dymoe.injection.adapter.ExpertAdapter.snapshot` / ``restore`` to discard the probes;
- PTL's last-token features of the frozen backbone: ``context.use(bypass=True)``;
- the per-task parameter budget: :meth:`~dymoe.injection.adapter.ExpertAdapter.parameter_report`.
"""
