"""Frank & Davis (arXiv 2603.02430): how the student's initialisation changes the best temperature.

Known from the paper: student initialisations compared include random (scratch), trained on the
target data, generally pretrained (ImageNet) and pretrained-then-finetuned; temperatures from 1
to 40. The architectures are not public here.

Chosen: CIFAR-100 at its native 32 px. Students need ImageNet weights, so they are torchvision
models: ResNet-18 (`tv_resnet18`) and MobileNetV2 (`tv_mobilenet_v2`), each from scratch and from
ImageNet weights (`init="imagenet"`, new head), both with the same student recipe (SGD lr 0.05,
momentum 0.9, wd 5e-4, batch 64, 240 epochs, lr x 0.1 at 62.5/75/87.5%) so that init is the only
change. The teacher is torchvision's ResNet-50 pretrained on ImageNet and finetuned on the target
data (lr 0.01, 60 epochs, same schedule fractions). Hinton KD, T in {1, 2, 3, 4, 6, 8, 12, 16,
24, 32, 40}; seeds 0, 1, 2. The figures put the two inits side by side in one row (`init`).
Runs: 1 teacher + 2 students x 2 inits x 11 T x 3 seeds = 133.

Target-trained and pretrained-then-finetuned students are weights files: add
`WeightsFile("path/to/student.pt")` to INITS below (identified by content hash).
"""
from fd_recipe import RECIPE, TEMPERATURES, finetuned_teacher

from tstudy import RunConfig, Study

INITS = ["scratch", "imagenet"]  # + [WeightsFile("...")] for target-trained / finetuned students

TEACHER = finetuned_teacher("tv_resnet50")

study = Study(
    name="fd_student_init",
    description=__doc__,
    base=RunConfig(model="tv_resnet18", teacher=TEACHER, method="kd", temperature=4, **RECIPE),
    axes={
        "model": ["tv_resnet18", "tv_mobilenet_v2"],
        "init": INITS,
        "temperature": TEMPERATURES,
    },
    seeds=[0, 1, 2],
)
