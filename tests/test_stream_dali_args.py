"""The plan -> DALI argument conversion of tstudy/data/dali.py (plain numpy; DALI not needed):
windows against plan boxes and against torchvision's crop semantics on a synthetic image."""
import numpy as np
import pytest
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from tstudy.data import plan as P
from tstudy.data.dali import flip_args, test_windows, train_windows


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _window(img, anchor, shape):
    """What DALI's ROI with axis_names="WH" (absolute anchor [x, y], shape [w, h]) selects."""
    x, y = (int(v) for v in anchor)
    w, h = (int(v) for v in shape)
    assert (x, y, w, h) == tuple(anchor.tolist()) + tuple(shape.tolist())  # exact integers
    return img[y:y + h, x:x + w]


def test_train_windows_are_the_plan_boxes():
    sizes = np.array([[30, 50], [120, 40], [64, 64], [500, 375]] * 25)
    plan = P.epoch_plan(sizes, 3, 1)
    anchors, shapes = train_windows(plan.boxes)
    assert anchors.dtype == shapes.dtype == np.float32 and anchors.shape == shapes.shape == (len(sizes), 2)
    np.testing.assert_array_equal(anchors, plan.boxes[:, [1, 0]])  # [left, top]
    np.testing.assert_array_equal(shapes, plan.boxes[:, [3, 2]])  # [w, h]
    hw = sizes[plan.order]
    assert (anchors >= 0).all() and (anchors + shapes <= hw[:, ::-1]).all()  # inside the stored image


def test_train_windows_crop_like_torchvision():
    sizes = np.array([[37, 83], [91, 29], [64, 64]])
    for seed in range(5):
        plan = P.epoch_plan(sizes, seed, 0)
        anchors, shapes = train_windows(plan.boxes)
        for pos, i in enumerate(plan.order):
            img = _image(*sizes[i], seed=int(i))
            top, left, h, w = (int(v) for v in plan.boxes[pos])
            want = np.asarray(TF.crop(Image.fromarray(img), top, left, h, w))
            np.testing.assert_array_equal(_window(img, anchors[pos], shapes[pos]), want)


def test_train_windows_reject_bad_boxes():
    with pytest.raises(ValueError):
        train_windows(np.array([[-1, 0, 5, 5]]))
    with pytest.raises(ValueError):
        train_windows(np.array([[0, 0, 0, 5]]))


def test_flip_args():
    got = flip_args(np.array([True, False, True]))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [1, 0, 1])


@pytest.mark.parametrize("resize,crop", [(36, 32), (72, 64), (256, 224)])
def test_test_windows_equal_resize_centercrop(resize, crop):
    sizes = np.array([[300, 400], [400, 300], [257, 256], [250, 333], [224, 224], [500, 281]])
    resized, anchors, shapes = test_windows(sizes, resize, crop)
    assert resized.dtype == anchors.dtype == shapes.dtype == np.float32
    np.testing.assert_array_equal(shapes, np.full((len(sizes), 2), crop))
    tf = T.Compose([T.Resize(resize), T.CenterCrop(crop)])
    for k, (h, w) in enumerate(sizes):
        pil = Image.fromarray(_image(int(h), int(w), seed=k))
        rw, rh = (int(v) for v in resized[k])
        assert T.Resize(resize)(pil).size == (rw, rh)  # torchvision's resized size, truncated
        small = np.asarray(pil.resize((rw, rh), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(_window(small, anchors[k], shapes[k]), np.asarray(tf(pil)))


def test_test_windows_reject_a_crop_larger_than_the_resized_image():
    with pytest.raises(ValueError, match="crop"):
        test_windows(np.array([[100, 100]]), 32, 40)


# --------------------------------------------------------------------------- --decoder dali: errors (no DALI needed)
STREAMED = """
from tstudy import RunConfig, Study
study = Study(name="{name}", base=RunConfig(model="cnn_s", dataset="imagefolder", image_size=32,
                                            augment="{augment}", batch_size=8, epochs=1), seeds=[0])
"""


def _study(tmp_path, name, augment):
    f = tmp_path / f"{name}.py"
    f.write_text(STREAMED.format(name=name, augment=augment))
    return f


@pytest.fixture
def no_dali(monkeypatch):
    """As if DALI were not installed: importing nvidia.dali raises ImportError."""
    import sys

    for name in list(sys.modules):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)


def test_decoder_dali_on_a_non_streamed_study_exits_2_with_one_line(tmp_path, capsys):
    from tstudy.cli import main

    f = _study(tmp_path, "plain", "crop_flip")
    for extra in ([], ["--dry-run"], ["--executor", "slurm"]):
        assert main(["launch", str(f), "--root", str(tmp_path / "res"), "--device", "cpu", "--decoder", "dali"]
                    + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tstudy: error: --decoder dali:") and "streamed" in err[0]
    assert not (tmp_path / "res").exists()  # nothing written


def test_decoder_dali_without_dali_exits_2_naming_the_extra(tmp_path, capsys, no_dali):
    from tstudy.cli import main
    from tstudy.data.dali import DaliMissing, available

    assert not available()
    f = _study(tmp_path, "streamed", "rrc_flip")
    assert main(["launch", str(f), "--root", str(tmp_path / "res"), "--device", "cpu", "--decoder", "dali"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['tstudy: error: --decoder dali: NVIDIA DALI is not installed; pip install "tstudy[dali]"']
    assert not (tmp_path / "res").exists()
    from tstudy.data.dali import DaliDecoder

    with pytest.raises(DaliMissing, match=r"tstudy\[dali\]"):
        DaliDecoder(tmp_path)


def test_decoder_is_a_machine_setting():
    from tstudy.engine import RunEnv
    from tstudy.errors import ConfigError
    from tstudy.executors.workers import _make_env
    from tstudy.machine import Machine

    assert RunEnv().machine.decoder == "cpu" and Machine().decoder == "cpu"
    assert _make_env(Machine(decoder="dali")).machine.decoder == "dali"
    with pytest.raises(ConfigError, match="--decoder"):
        RunEnv(decoder="gpu")
