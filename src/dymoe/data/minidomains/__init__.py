"""mini-domains: a procedurally generated miniature of SMoE's domain-incremental benchmark (Medicine → Chart → Math,
smoe-dsal.md §6), the domain-incremental counterpart of mini-CoIN, in the layout of ``configs/benchmarks/smoe3.yaml``
and scored by the real benchmark's scorers (``medvqa``, ``chartqa-relaxed``, ``chart-table-rms``, ``bleu4``,
``math``). Deterministic and checksummed (``MANIFEST.json``).

==========  =================  ================  ================================
scale       train pictures     test pictures     use
==========  =================  ================  ================================
small       64 per domain      16 per domain     tests and the miniature runs
default     200                40                longer runs
large       1000               150               closer-to-real runs
==========  =================  ================  ================================

Rows per picture: Medicine 3 (a closed and an open question, a description), Chart 3 (QA, table, summary),
Math 2 (two questions).

>>> from dymoe.data.minidomains import generate, verify
>>> yaml_path = generate("data/mini-domains", scale="small", seed=0)
>>> verify("data/mini-domains")
[]
"""

from __future__ import annotations

from dymoe.data.minidomains.writer import DOMAINS, SCALES, generate, verify

__all__ = ["DOMAINS", "SCALES", "generate", "verify"]
