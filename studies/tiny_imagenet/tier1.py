"""Tiny-ImageNet Tier 1: resnet56 -> resnet20, eight methods x T in {1, 2, 4, 8, 16} x 3 seeds.

ce (no teacher, one run per seed), kd, ttm, wttm, dkd, dtkd, ctkd and lskd, all distilling from
the resnet56 teacher (tin_recipe.py), 15 epochs, bf16, packed per seed.
"""
from tin_recipe import SEEDS, TEMPERATURES, TIER1, student

from tstudy import Study

study = Study(name="tin_tier1", description=__doc__, base=student(),
              axes={("method", "method_params"): TIER1, "temperature": TEMPERATURES}, seeds=SEEDS)
