"""Converters: public datasets on disk → the benchmark files of ``configs/benchmarks/smoe3.yaml``.

``dymoe convert NAME --src DIR --out DIR`` reads a dataset in its original release layout from ``--src`` (nothing is
downloaded) and writes, under ``--out`` (the benchmark's ``data_root``), LLaVA training rows, CoIN-format test rows
and the images they use (hard-linked when possible, else copied). One line per converter:
"""

from __future__ import annotations

from dymoe.data.convert.smoe import (
    convert_chart_to_text,
    convert_chartqa,
    convert_hf_medvqa,
    convert_llava_med,
    convert_math_llava,
    convert_slake,
)
from dymoe.registry import Registry

CONVERTERS: Registry = Registry("converter")
CONVERTERS.add("slake", convert_slake)
CONVERTERS.add("vqa-rad", lambda src, out: convert_hf_medvqa(src, out, "vqa_rad"))
CONVERTERS.add("pathvqa", lambda src, out: convert_hf_medvqa(src, out, "pathvqa"))
CONVERTERS.add("llava-med", convert_llava_med)
CONVERTERS.add("chartqa", convert_chartqa)
CONVERTERS.add("chart-to-text", convert_chart_to_text)
CONVERTERS.add("math-llava", convert_math_llava)

__all__ = ["CONVERTERS"]
