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


# ----------------------------------------------------------------------------- CPU program
# The small-scale sibling that a 2-core CPU finishes (the cpu_*.py study files): Tiny-ImageNet-200
# at 16 px (all 200 classes; the 64-px images resized, antialiased, as ImageNet16x16 is), the first
# 100 training images of each class, of which 10 % held out as the validation split (90 train + 10
# val per class; the test split is all 10,000 val images). Teacher resnet8x4 (30 epochs; a resnet56
# teacher of this recipe reached only 12.87 % test top-1, 1.8 points above the CE student), students
# resnet8 (15 epochs), float32 (this machine has no bf16 hardware: bf16 autocast was ~10x slower),
# the CIFAR recipe at batch 128, lr x 0.1 at 50 % and 75 % (decayed to the end). The scale is
# small on purpose: every result of these studies is labelled "small scale, CPU".
CPU_DATA = dict(dataset="tinyimagenet", image_size=16, train_per_class=100, val_fraction=0.1)
CPU_RECIPE = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128,
                  milestones=(0.5, 0.75), **CPU_DATA)
CPU_TEACHER = RunConfig(model="resnet8x4", method="ce", epochs=30, **CPU_RECIPE)
CPU_SEEDS = [0, 1, 2]
# the line every figure of the CPU studies carries
CPU_NOTE = "small scale, CPU: Tiny-ImageNet-200, 16 px"
CPU_SEEDS_CE_KD = [0, 1, 2, 3, 4]


def cpu_student(**changes) -> RunConfig:
    """A resnet8 student of the CPU program's resnet8x4 teacher (KD at T=4 unless changed)."""
    return RunConfig(model="resnet8", teacher=CPU_TEACHER, method="kd", epochs=STUDENT_EPOCHS,
                     eval_epochs=(5, 10), **{**CPU_RECIPE, **changes})
# Tier 2 (Fig. 5): KD's relational ablations; tier 3 (Figs. 2-3): SGD vs AdamW x two lengths, each
# evaluated at 1/3 and 2/3 of its epochs (15 epochs: 5 and 10, as every student of the program).
RELATIONAL = [("ls", {}), ("kd_shuffled", {}), ("kd_topk", {"k": 5}), ("tckd", {}), ("nckd", {})]
OPTIMIZERS = [("sgd", 0.1, 5e-4), ("adamw", 1e-3, 5e-2)]  # (optimizer, lr, weight_decay)
CPU_DURATIONS = [STUDENT_EPOCHS, 3 * STUDENT_EPOCHS]


def thirds(cfg: RunConfig) -> RunConfig:
    """Evaluated at 1/3 and 2/3 of its epochs besides the last (the early points of Fig. 3)."""
    return cfg.replace(eval_epochs=(cfg.epochs // 3, 2 * cfg.epochs // 3))
