"""A fine-grained set (CUB-200-2011 or Stanford Cars, class-per-folder) at 224 px: how the best
temperature moves when the teacher is an ImageNet model finetuned on the target data (as in
Frank & Davis, arXiv 2603.02430: the teacher's origin is one of their axes).

Data: `imagefolder` with `augment="rrc_flip"` (streamed: RandomResizedCrop + flip, resize 256 +
centre crop 224 for evaluation): `--data-root` the folder holding train/<class>/* and
val/<class>/* (or test/<class>/*). CUB-200-2011 ships a train/test list (train_test_split.txt),
not folders: sort its images into train/ and test/ once. 10 % of each class of train is held out
as the validation split (val_fraction), so T can be selected without looking at the test set.

Teacher: torchvision's ResNet-50 (IMAGENET1K_V1) finetuned with cross-entropy (init "imagenet",
new head). Students: ResNet-18 from torchvision's ImageNet weights (the usual fine-grained start)
and from scratch. Recipe (the common fine-grained finetuning recipe): SGD lr 0.01, momentum 0.9,
weight decay 1e-4, batch 64, 60 epochs, lr x 0.1 at 50 % and 75 %; bf16. KD (CE 0.1 + KD 0.9, the
tstudy default) at T in {1, 2, 3, 4, 6, 8, 12, 16} (Frank & Davis sweep 1..40; the upper values
matter for a finetuned teacher's confident outputs), plus the ce student; seeds 0, 1, 2.
Runs: 1 teacher + 2 students x (8 T + ce) x 3 seeds = 55.

ImageNet weights are read from torchvision's cache (tstudy does not download; see
`tstudy.models.weights`).
"""
from tstudy import RunConfig, Study

DATA = dict(dataset="imagefolder", image_size=224, augment="rrc_flip", val_fraction=0.1)
RECIPE = dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=64, epochs=60,
              milestones=(0.5, 0.75), precision="bf16", **DATA)
TEACHER = RunConfig(model="tv_resnet50", method="ce", init="imagenet", **RECIPE)
TEMPERATURES = [1, 2, 3, 4, 6, 8, 12, 16]

study = Study(
    name="imagenet_finegrained_temperature",
    description=__doc__,
    base=RunConfig(model="tv_resnet18", teacher=TEACHER, method="kd", temperature=4, init="imagenet", **RECIPE),
    axes={
        "init": ["imagenet", None],
        ("method", "method_params"): [("ce", {}), ("kd", {})],
        "temperature": TEMPERATURES,
    },
    seeds=[0, 1, 2],
)
