"""Shared by the Frank & Davis study files: the standard CIFAR-100 KD recipe, the temperature grid
and the two teacher/student pairs. (Not a study itself; study files import it.)

SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, lr x 0.1 at 62.5/75/87.5% of
training (= epochs 150/180/210; fractions, so `--set epochs=30` keeps them valid).
"""
from tstudy import RunConfig

SGD = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
ADAMW = dict(optimizer="adamw", lr=1e-3, weight_decay=5e-2)
RECIPE = dict(dataset="cifar100", batch_size=64, epochs=240, milestones=(0.625, 0.75, 0.875), **SGD)
TEMPERATURES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40]


def teacher(model: str) -> RunConfig:
    """A teacher trained from scratch with cross-entropy on the standard recipe."""
    return RunConfig(model=model, method="ce", **RECIPE)


def finetuned_teacher(model: str) -> RunConfig:
    """A teacher from torchvision's ImageNet weights, finetuned with cross-entropy (lr 0.01, 60 epochs)."""
    return RunConfig(model=model, method="ce", **{**RECIPE, "lr": 0.01, "epochs": 60}, init="imagenet")


PAIRS = [(teacher("resnet56"), "resnet20"), (teacher("resnet32x4"), "resnet8x4")]
