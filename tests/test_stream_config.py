"""Streamed runs are checked when their config is built (one line, exit code 2 through the CLI):
what the streamed data path cannot do is refused before anything is written or launched."""
import pytest

from tstudy import RunConfig
from tstudy.config import is_streamed
from tstudy.errors import ConfigError

FOLDER = dict(dataset="imagefolder", model="tv_resnet18", image_size=32)


def test_the_augmentation_decides_the_path():
    assert is_streamed("imagenet", None) and is_streamed("imagefolder", "rrc_flip")
    assert not is_streamed("imagefolder", "crop_flip") and not is_streamed("imagefolder", None)
    assert not is_streamed("cifar100", "crop_flip")


@pytest.mark.parametrize("data", [dict(dataset="imagenet", model="tv_resnet18"), dict(FOLDER, augment="rrc_flip")])
def test_coarse_labels_are_refused_on_the_streamed_path(data):
    with pytest.raises(ConfigError, match="^labels: the streamed data path"):
        RunConfig(**data, labels="coarse")
    RunConfig(**data)  # fine labels: accepted


def test_a_teacher_on_the_other_data_path_is_refused():
    teacher = RunConfig(**FOLDER, augment="crop_flip", epochs=2)
    with pytest.raises(ConfigError, match="^teacher.augment: 'crop_flip' puts the teacher on the in-memory"):
        RunConfig(**FOLDER, augment="rrc_flip", teacher=teacher, method="kd", temperature=4.0)
    with pytest.raises(ConfigError, match="^teacher.augment: 'rrc_flip' puts the teacher on the streamed"):
        RunConfig(**FOLDER, augment="crop_flip", teacher=teacher.replace(augment="rrc_flip"), method="kd",
                  temperature=4.0)
    RunConfig(**FOLDER, augment="rrc_flip", teacher=teacher.replace(augment="rrc_flip"), method="kd", temperature=4.0)


def test_methods_needing_the_teachers_training_logits_are_refused_when_streamed():
    teacher = RunConfig(**FOLDER, augment="rrc_flip", epochs=2)
    with pytest.raises(ConfigError, match="^method: 'ls' needs the teacher's logits on the whole training set"):
        RunConfig(**FOLDER, augment="rrc_flip", teacher=teacher, method="ls", temperature=4.0)
    RunConfig(**FOLDER, augment="rrc_flip", teacher=teacher, method="kd", temperature=4.0)


def test_the_cli_refuses_a_streamed_ls_study_in_one_line(tmp_path, capsys):
    from tstudy.cli import main

    study = tmp_path / "s.py"
    study.write_text(
        "from tstudy import RunConfig, Study\n"
        "t = RunConfig(dataset='imagefolder', model='tv_resnet18', image_size=32, augment='rrc_flip', epochs=2)\n"
        "study = Study(name='s', base=RunConfig(dataset='imagefolder', model='tv_resnet18', image_size=32,\n"
        "              augment='rrc_flip', teacher=t, method='ls', temperature=4.0))\n")
    assert main(["launch", str(study), "--root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method: 'ls' needs the teacher's logits" in err[0]
    assert not (tmp_path / "root").exists()
