"""Frank & Davis (arXiv 2603.02430): how the teacher's origin changes the best temperature —
a teacher trained from scratch on the target data vs one pretrained on ImageNet and finetuned.

Known from the paper: teachers pretrained and/or finetuned are one of the studied axes, and the
teacher's origin is reported to matter for temperature selection; temperatures from 1 to 40.
The architectures and finetuning recipe are not public here.

Chosen: CIFAR-100 at its native 32 px. The CIFAR ResNets have no ImageNet weights, so the teacher
is torchvision's ResNet-18 (`tv_resnet18`, ImageNet stem kept): once from scratch with the standard
recipe (SGD lr 0.05, momentum 0.9, wd 5e-4, batch 64, 240 epochs, lr x 0.1 at 62.5/75/87.5%),
once initialised from torchvision's ImageNet weights (`init="imagenet"`, new head) and finetuned
with lr 0.01 for 60 epochs (same schedule fractions). Students resnet20 and resnet8x4 from scratch
with Hinton KD and the standard recipe; T in {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40}; seeds 0, 1, 2.
The figures put the two teachers side by side in one row with one y-range (`teacher_init`).
Runs: 2 teachers + 2 teachers x 2 students x 11 T x 3 seeds = 134.

ImageNet weights are read from torchvision's cache (see `tstudy.models.weights`); on
32 px images the ImageNet stem downsamples hard, `--set image_size=64` (students and teachers)
is closer to the resolution the weights were trained at, at ~4x the cost.
"""
from fd_recipe import RECIPE, TEMPERATURES, finetuned_teacher

from tstudy import RunConfig, Study


SCRATCH = RunConfig(model="tv_resnet18", method="ce", **RECIPE)
FINETUNED = finetuned_teacher("tv_resnet18")

study = Study(
    name="fd_teacher_finetune",
    description=__doc__,
    base=RunConfig(model="resnet20", teacher=SCRATCH, method="kd", temperature=4, **RECIPE),
    axes={
        "teacher": [SCRATCH, FINETUNED],
        "model": ["resnet20", "resnet8x4"],
        "temperature": TEMPERATURES,
    },
    seeds=[0, 1, 2],
)
