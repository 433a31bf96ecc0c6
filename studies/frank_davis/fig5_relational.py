"""Frank & Davis (arXiv 2603.02430), Fig. 5: KD vs methods that alter how much relational
information (how the teacher ranks the non-target classes) the student receives, across T.

Known from the paper: compared are KD, label smoothing with ε matched to the teacher's entropy
(same entropy, no relations), KD with the non-target probabilities shuffled, top-k KD, and DKD's
target-class (TCKD) and non-target (NCKD) parts alone; temperatures from 1 to 40. The value(s) of
k and the exact grid are not public here.

Chosen: CIFAR-100, resnet56 -> resnet20 and resnet32x4 -> resnet8x4, the standard recipe (SGD
lr 0.05, momentum 0.9, wd 5e-4, batch 64, 240 epochs, lr x 0.1 at 62.5/75/87.5%); methods kd,
ls (entropy-matched), kd_shuffled, kd_topk with k in {1, 5}, tckd, nckd (all with w_ce 0.1 as
kd; tckd/nckd weight 1, no warm-up) and the ce student (reference);
T in {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40}; seeds 0, 1, 2.
Runs: 2 teachers + 2 pairs x (7 x 11 T + ce) x 3 seeds = 470.
"""
from fd_recipe import PAIRS, RECIPE, TEMPERATURES

from tstudy import RunConfig, Study


study = Study(
    name="fd_fig5_relational",
    description=__doc__,
    base=RunConfig(model="resnet20", teacher=PAIRS[0][0], method="kd", temperature=4, **RECIPE),
    axes={
        ("teacher", "model"): PAIRS,
        ("method", "method_params"): [
            ("ce", {}), ("kd", {}), ("ls", {}), ("kd_shuffled", {}),
            ("kd_topk", {"k": 1}), ("kd_topk", {"k": 5}), ("tckd", {}), ("nckd", {}),
        ],
        "temperature": TEMPERATURES,
    },
    seeds=[0, 1, 2],
)
