"""Frank & Davis (arXiv 2603.02430): how label granularity changes the best temperature —
CIFAR-100's 100 fine classes vs its 20 coarse superclasses.

Known from the paper: the granularity of the labels (fine vs coarse classes of the same images)
is one of the studied axes; temperatures from 1 to 40. The architectures are not public here.

Chosen: CIFAR-100 at its native 32 px, `labels` "fine" (100 classes) or "coarse" (20
superclasses); each teacher is trained on the same labels as its students (a data field). The
two standard pairs resnet56 -> resnet20 and resnet32x4 -> resnet8x4 with the standard recipe
(SGD lr 0.05, momentum 0.9, wd 5e-4, batch 64, 240 epochs, lr x 0.1 at 62.5/75/87.5%); Hinton
KD, T in {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40}; seeds 0, 1, 2. The figures put fine and coarse
side by side in one row with the same y-range (`labels`).
Runs: 2 granularities x (2 teachers + 2 pairs x 11 T x 3 seeds) = 136.
"""
from fd_recipe import PAIRS, RECIPE, TEMPERATURES

from tstudy import RunConfig, Study

# A teacher's labels must equal its students' (a data field): one teacher per pair and granularity.
LABELLED_PAIRS = [(labels, t.replace(labels=labels), model) for labels in ("fine", "coarse") for t, model in PAIRS]

study = Study(
    name="fd_granularity",
    description=__doc__,
    base=RunConfig(model="resnet20", teacher=PAIRS[0][0], method="kd", temperature=4, **RECIPE),
    axes={
        ("labels", "teacher", "model"): LABELLED_PAIRS,
        "temperature": TEMPERATURES,
    },
    seeds=[0, 1, 2],
)
