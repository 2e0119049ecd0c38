"""Resolve what a config names into files on disk: built-in backbones and the embedded mini-CoIN.

- ``backbone.path: tiny:<preset>`` builds (once, cached) the offline tiny LLaVA of that preset
  (:func:`dymoe.models.tiny.make_tiny_llava`, random weights: for tests and smoke runs); ``tiny:<family>``
  (``tiny:qwen2_vl``, ``tiny:mllama``...) the tiny random model of that family
  (:func:`dymoe.models.tiny_families.make_tiny_family`);
- ``backbone.path: demo:base`` builds (once, cached, checksummed) the caption-pretrained demo base
  (:func:`dymoe.demo.base.build_demo_base`);
- ``benchmark.file: minicoin`` generates (once, cached, checksummed) mini-CoIN at ``benchmark.minicoin_scale``;
  ``benchmark.file: minidomains`` the same for mini-domains (SMoE's Medicine -> Chart -> Math miniature).

The cache lives in ``$DYMOE_CACHE`` or ``~/.cache/dymoe`` (:func:`dymoe.cache.cache_dir`); entries are keyed by
their parameters and verified before reuse (a corrupted mini-CoIN is rebuilt).
"""

from __future__ import annotations

from pathlib import Path

from dymoe.cache import cache_dir
from dymoe.errors import ConfigError


def resolve_backbone_path(path: str) -> str:
    """A loadable backbone path for a config value (builds ``tiny:<preset>`` into the cache)."""
    if not path:
        raise ConfigError("backbone.path is empty: give a local model folder (or tiny:test for a random tiny LLaVA)")
    if path.startswith("tiny:"):
        from dymoe.models.tiny import PRESETS, make_tiny_llava
        from dymoe.models.tiny_families import FAMILIES, make_tiny_family

        preset = path.split(":", 1)[1] or "test"
        if preset in FAMILIES and preset not in PRESETS:  # tiny:qwen2_vl, tiny:mllama, ... (random weights)
            out = cache_dir() / "backbones" / f"tiny-{preset}-seed0"
            if not (out / "config.json").is_file():
                make_tiny_family(preset, out, seed=0, overwrite=True)
            return str(out)
        if preset not in PRESETS:
            raise ConfigError(f"backbone.path {path!r}: unknown tiny preset or family; known: {sorted(PRESETS)} "
                              f"and {[f for f in FAMILIES if f not in PRESETS]}")
        out = cache_dir() / "backbones" / f"tiny-{preset}-seed0"
        if not (out / "config.json").is_file():
            make_tiny_llava(out, preset=preset, seed=0, overwrite=True)
        return str(out)
    if path.startswith("demo:"):
        # the caption-pretrained demo base (dymoe.demo.base), built once into <cache>/demo-base/ and verified
        from dymoe.demo.base import build_demo_base

        if path != "demo:base":
            raise ConfigError(f"backbone.path {path!r}: the only demo backbone is demo:base")
        return str(build_demo_base())
    return path


def resolve_minicoin(scale: str, seed: int = 0) -> Path:
    """``benchmark.yaml`` of mini-CoIN at ``scale`` in the cache, generated or regenerated as needed."""
    from dymoe.data.minicoin import generate, verify
    from dymoe.data.minicoin.writer import GENERATOR_VERSION

    # keyed by the generator version too, so a cache made by an older generator is never reused
    out = cache_dir() / "minicoin" / f"v{GENERATOR_VERSION}-{scale}-seed{seed}"
    yaml_path = out / "benchmark.yaml"
    if yaml_path.is_file() and not verify(out):
        return yaml_path
    return Path(generate(out, scale=scale, seed=seed, force=True))


def resolve_minidomains(scale: str, seed: int = 0) -> Path:
    """``benchmark.yaml`` of mini-domains at ``scale`` in the cache, generated or regenerated as needed."""
    from dymoe.data.minidomains import generate, verify
    from dymoe.data.minidomains.writer import GENERATOR_VERSION

    out = cache_dir() / "minidomains" / f"v{GENERATOR_VERSION}-{scale}-seed{seed}"
    yaml_path = out / "benchmark.yaml"
    if yaml_path.is_file() and not verify(out):
        return yaml_path
    return Path(generate(out, scale=scale, seed=seed, force=True))
