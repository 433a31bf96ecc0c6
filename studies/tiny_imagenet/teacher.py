"""Tiny-ImageNet teacher: resnet56 with cross-entropy, 30 epochs (tin_recipe.py has the recipe).

Every student study names this same run; under one root it is trained once.
"""
from tin_recipe import TEACHER

from tstudy import Study

study = Study(name="tin_teacher", description=__doc__, base=TEACHER, seeds=[0])
