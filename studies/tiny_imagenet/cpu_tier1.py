"""Tiny-ImageNet CPU program (small scale), tier 1: resnet8x4 -> resnet8 at 16 px, eight methods.

ce (no teacher), kd, ttm, wttm, dkd, dtkd, ctkd and lskd at T in {1, 2, 4, 8, 16}; seeds 0-4 for
ce and kd, 0-2 for the others; 15 epochs, float32, validation split on (tin_recipe.py).
"""
from tin_recipe import CPU_NOTE, CPU_SEEDS, CPU_SEEDS_CE_KD, TEMPERATURES, TIER1, cpu_student

from tstudy import Study

study = Study(name="tin_cpu_tier1", description=__doc__, figure_note=CPU_NOTE, base=cpu_student(),
              axes={("method", "method_params"): TIER1, "temperature": TEMPERATURES}, seeds=CPU_SEEDS_CE_KD,
              where=lambda c: c.method in ("ce", "kd") or c.seed in CPU_SEEDS)
