"""Tiny-ImageNet CPU program (small scale): the resnet8x4 teacher, 30 epochs at 16 px (tin_recipe.py).

Every cpu_* student study names this same run; under one root it is trained once.
"""
from tin_recipe import CPU_TEACHER

from tstudy import Study

study = Study(name="tin_cpu_teacher", description=__doc__, base=CPU_TEACHER, seeds=[0])
