"""Shared by the ImageNet study files (not a study itself): data, the standard ImageNet KD recipe,
torchvision's ResNet-34 as the teacher, the temperature grid.

Data: ILSVRC-2012 at 224 px, streamed from its packed store (README "ImageNet and large
datasets"): RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3)) + flip for training,
resize 256 + centre crop 224 for evaluation; the 50,000 val images are the test split.

Recipe: the ResNet-34 -> ResNet-18 setting of the KD papers on ImageNet: SGD lr 0.1, momentum 0.9,
weight decay 1e-4, batch 256, 100 epochs, lr x 0.1 at epochs 30/60/90 (CRD, Tian et al. ICLR 2020;
ReviewKD, Chen et al. CVPR 2021; DKD, Zhao et al. CVPR 2022, Sec. 4 "ImageNet"; mdistiller's
configs/imagenet/r34_r18/*.yaml write the same schedule at batch 512 / lr 0.2, the linear scaling of
256 / 0.1). bf16 autocast (softmax/KL in float32), as tstudy's GPU recipes.

Teacher: torchvision's ResNet-34 ImageNet weights (IMAGENET1K_V1, 73.31 % top-1 in torchvision's
table), as the papers use; a TeacherFile identified by the file's sha256. tstudy does not download:
put torchvision's file at the path below (or set $TSTUDY_IMAGENET_R34 to where it is), e.g. by
running `torchvision.models.resnet34(weights="IMAGENET1K_V1")` once on a machine with internet.
`tstudy launch` checks the file and its hash before any run starts (`tstudy plan` needs neither).
"""
import os

from tstudy import RunConfig, TeacherFile, WeightsFile

DATA = dict(dataset="imagenet", image_size=224, augment="rrc_flip")
RECIPE = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=256, epochs=100,
              milestones=(30, 60, 90), precision="bf16", **DATA)

# torchvision's file name carries the first 8 hex digits of its sha256 (b627a593); the full digest
# (file of 87,319,819 bytes) as several independent public records of that file give it.
R34_SHA256 = "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f"
R34_PATH = os.environ.get("TSTUDY_IMAGENET_R34", "~/.cache/torch/hub/checkpoints/resnet34-b627a593.pth")
TEACHER = TeacherFile("tv_resnet34", WeightsFile(R34_PATH, R34_SHA256))

# T: DKD and mdistiller train KD and DKD on ImageNet at T = 1 (configs/imagenet/r34_r18/kd.yaml,
# dkd.yaml: TEMPERATURE 1, T 1.0), CIFAR-100 at T = 4 (Hinton KD's usual CIFAR value, CRD/DKD);
# CTKD (Li et al. AAAI 2023) learns T within [1, 21] starting from 1. The grid brackets the
# ImageNet and CIFAR choices and CTKD's start: {1, 2, 3, 4, 6, 8}.
TEMPERATURES = [1, 2, 3, 4, 6, 8]
# The losses' weights of mdistiller's ImageNet configs: KD CE 0.5 + KD 0.5; DKD CE 1, alpha 1,
# beta 0.5, warm-up 1 epoch.
KD_PARAMS = {"w_ce": 0.5, "w_kd": 0.5}
DKD_PARAMS = {"w_ce": 1.0, "alpha": 1.0, "beta": 0.5, "warmup": 1.0}
