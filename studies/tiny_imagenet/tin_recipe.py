"""Shared by the Tiny-ImageNet study files (not a study itself): data, recipe, teacher, grids.

Tiny-ImageNet-200 at 32 px (the 64-px images resized, antialiased), CIFAR models and the CIFAR
recipe at batch 128: SGD lr 0.1, momentum 0.9, weight decay 5e-4, lr x 0.1 at 50% and 75% of
training, bf16 autocast (softmax/KL in float32). The teacher is resnet56 (30 epochs), a run of
its own that every student study names: the run store shared by the studies under one root
trains it once (``teacher.py`` trains it alone). Students are resnet20, 15 epochs. Epoch-based method parameters (DKD's warm-up, CTKD's lambda ramp) are
scaled from their 240-epoch defaults to the 15-epoch runs.
"""
from tstudy import RunConfig

DATA = dict(dataset="tinyimagenet", image_size=32)
RECIPE = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128,
              milestones=(0.5, 0.75), precision="bf16", **DATA)
TEACHER = RunConfig(model="resnet56", method="ce", epochs=30, **RECIPE)
STUDENT_EPOCHS = 15
TEMPERATURES = [1, 2, 4, 8, 16]
SEEDS = [0, 1, 2]
SCALE = STUDENT_EPOCHS / 240  # the methods' epoch-based defaults assume 240 epochs


def student(**changes) -> RunConfig:
    """A resnet20 student of the resnet56 teacher (KD at T=4 unless changed)."""
    return RunConfig(model="resnet20", teacher=TEACHER, method="kd", epochs=STUDENT_EPOCHS,
                     eval_epochs=(5, 10), **{**RECIPE, **changes})


# CTKD learns T in (t_start, t_start + t_range) and the swept T is its initial value, which must
# lie strictly inside: widened to (0.5, 20.5) so that every T of the grid is valid.
CTKD_RANGE = {"t_start": 0.5, "t_range": 20.0}
TIER1 = [("ce", {}), ("kd", {}), ("ttm", {}), ("wttm", {}), ("dkd", {"warmup": 20 * SCALE}),
         ("dtkd", {"warmup": 20 * SCALE}), ("ctkd", {"lambda_epochs": 10 * SCALE, **CTKD_RANGE}), ("lskd", {})]
