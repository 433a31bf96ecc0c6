"""Tiny-ImageNet CPU program (small scale), tier 2: KD's relational ablations (Fig. 5).

Entropy-matched label smoothing (ls), KD with the non-target probabilities shuffled, top-5 KD,
and DKD's target (tckd) and non-target (nckd) parts alone, at T in {1, 2, 4, 8, 16}, seeds 0-2;
resnet8x4 -> resnet8 at 16 px, 15 epochs (tin_recipe.py). KD and the CE student are tier 1's runs.
"""
from tin_recipe import CPU_NOTE, CPU_SEEDS, RELATIONAL, TEMPERATURES, cpu_student

from tstudy import Study

study = Study(name="tin_cpu_tier2", description=__doc__, figure_note=CPU_NOTE, base=cpu_student(),
              axes={("method", "method_params"): [("ce", {}), ("kd", {})] + RELATIONAL,
                    "temperature": TEMPERATURES}, seeds=CPU_SEEDS)
