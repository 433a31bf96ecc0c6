"""Frank & Davis (arXiv 2603.02430), Fig. 1: student accuracy of several KD methods across temperatures.

Known from the paper: temperatures from 1 to 40; a shared fixed temperature with plain KL (Hinton
KD) is reported as the most robust simple choice, no KD method consistently beating it; CNN
teacher/student pairs on CIFAR-100 among others. The exact method list and grid are not public here.

Chosen: CIFAR-100 with the two standard pairs resnet56 -> resnet20 and resnet32x4 -> resnet8x4; the
standard KD recipe (SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, lr x 0.1 at
62.5/75/87.5% of training = epochs 150/180/210; milestones are fractions so `--set epochs=30` keeps
them valid); the logit-based methods registered in tstudy that take a temperature (kd, lskd, ttm,
wttm, dkd, dtkd, ctkd) plus the cross-entropy student (ce, no teacher: the reference line) at
T in {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40}; seeds 0, 1, 2. Each method reads T its own way (see
`tstudy.methods.describe_methods()`; CTKD's learnable range is widened to (0.5, 40.5) so that
every T is a valid initial temperature). Runs: 2 teachers + 2 pairs x (7 methods x 11 T + ce) x 3 seeds = 470.

Any field can be overridden from the command line, e.g.
`tstudy launch studies/frank_davis/fig1_methods.py --set dataset=tinyimagenet --set epochs=30`
(data fields also go to the teachers; `--set teacher.epochs=30` shortens the teachers too).
"""
from fd_recipe import PAIRS, RECIPE, TEMPERATURES

from tstudy import RunConfig, Study

# CTKD learns T in (t_start, t_start + t_range), default (1, 21), and its swept T is the initial
# value, which must lie strictly inside: widened to (0.5, 40.5) so every T of the grid is valid.
CTKD_RANGE = {"t_start": 0.5, "t_range": 40.0}


study = Study(
    name="fd_fig1_methods",
    description=__doc__,
    base=RunConfig(model="resnet20", teacher=PAIRS[0][0], method="kd", temperature=4, **RECIPE),
    axes={
        ("teacher", "model"): PAIRS,
        ("method", "method_params"): [
            ("ce", {}), ("kd", {}), ("lskd", {}), ("ttm", {}), ("wttm", {}), ("dkd", {}), ("dtkd", {}),
            ("ctkd", CTKD_RANGE),
        ],
        "temperature": TEMPERATURES,
    },
    seeds=[0, 1, 2],
)
