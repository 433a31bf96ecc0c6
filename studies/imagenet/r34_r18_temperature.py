"""ImageNet, ResNet-34 -> ResNet-18: student accuracy across temperatures for Hinton KD and DKD.

The standard ImageNet setting of the KD papers (see imagenet_recipe.py for the recipe, the teacher
file and where each number comes from): torchvision's ImageNet ResNet-34 as the teacher, a
ResNet-18 (`tv_resnet18`, from scratch) student, 100 epochs; KD with CE 0.5 + KD 0.5 and DKD with
mdistiller's ImageNet weights, at T in {1, 2, 3, 4, 6, 8}, plus the cross-entropy student (the
reference line); one seed (an ImageNet run is ~1 GPU-day; add seeds with `--seeds 0,1`).
Runs: 2 methods x 6 T + ce = 13.

Needs the ILSVRC-2012 images (the packed stores are built on first use) and torchvision's
ResNet-34 weights file (imagenet_recipe.py). A pack of the 12 KD/DKD runs (`--pack 12`) reads each
batch and runs the teacher once for all of them; `--checkpoint-steps 1000` keeps pre-emption cheap.
"""
from imagenet_recipe import DKD_PARAMS, KD_PARAMS, RECIPE, TEACHER, TEMPERATURES

from tstudy import RunConfig, Study

study = Study(
    name="imagenet_r34_r18_temperature",
    description=__doc__,
    base=RunConfig(model="tv_resnet18", teacher=TEACHER, method="kd", temperature=1, **RECIPE),
    axes={
        ("method", "method_params"): [("ce", {}), ("kd", KD_PARAMS), ("dkd", DKD_PARAMS)],
        "temperature": TEMPERATURES,
    },
    seeds=[0],
)
