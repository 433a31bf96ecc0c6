"""The optional DALI decoder (tstudy/data/dali.py) on DALI's CPU pipeline: shapes and dtypes, the
same plan gives identical batches, start_step resumes to the tail of the epoch, labels follow the
plan, pixels close to the CPU decoder's (DecoderPool), and a streamed run trains with it.

Skipped without DALI (an optional extra: pip install "tstudy[dali]"); the parts that do not need
DALI (plan -> DALI arguments, the errors of --decoder dali) are in test_stream_dali_args.py."""
import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from tstudy.data import plan as P  # noqa: E402
from tstudy.data.dali import DaliDecoder  # noqa: E402
from tstudy.data.decode import DecoderPool  # noqa: E402
from tstudy.data.packed import PackedStore, build_store  # noqa: E402

from test_data import TINY_TRAIN0 as TINY_ZIP, needs_tiny  # noqa: E402 (../shared beside the checkout; never skipped under CI)
from test_stream_store import make_folder  # noqa: E402

# Measured on these synthetic JPEGs (30-120 px; DALI 2.4 CPU pipeline vs Pillow): mean |difference|
# 0.16-0.19 grey levels, max 10 (train, 32-112 px); test transform 0.15-0.17, max 1.
MEAN_ABS_MAX = 0.5


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dali")
    make_folder(tmp / "src")
    return PackedStore(build_store(tmp / "src", tmp / "store", progress=False))


@pytest.fixture(scope="module")
def dec(store):
    with DaliDecoder(store, "cpu", threads=2) as d:
        yield d


@pytest.fixture(scope="module")
def pool(store):
    with DecoderPool(store, workers=0, pin_memory=False) as p:
        yield p


def test_auto_is_cpu_without_cuda(store):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert DaliDecoder(store).device == "cpu"


def test_train_batches_shapes_labels_and_determinism(store, dec):
    plan = P.epoch_plan(store.sizes, 0, 0)
    batches = list(dec.train_batches(plan, 8, 32))
    assert len(batches) == plan.n_steps(8) == len(store) // 8
    for step, (x, y) in enumerate(batches):
        assert x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8 and x.device.type == "cpu"
        assert y.dtype == torch.int64
        idx = plan.batch(step, 8)[0]
        np.testing.assert_array_equal(y.numpy(), store.labels[idx])
    again = list(dec.train_batches(plan, 8, 32))  # same plan, a fresh pipeline: identical batches
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    tail = list(dec.train_batches(plan, 8, 32, start_step=2))
    assert len(tail) == len(batches) - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches[2:], tail))
    assert list(dec.train_batches(plan, 8, 32, start_step=plan.n_steps(8))) == []
    other = torch.cat([x for x, _ in dec.train_batches(P.epoch_plan(store.sizes, 0, 1), 8, 32)])
    assert not torch.equal(other, torch.cat([x for x, _ in batches]))  # another epoch, another plan


def test_an_abandoned_iterator_does_not_disturb_the_next(store, dec):
    plan = P.epoch_plan(store.sizes, 1, 0)
    full = list(dec.train_batches(plan, 8, 32))
    it = dec.train_batches(plan, 8, 32)
    next(it)
    it.close()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, dec.train_batches(plan, 8, 32)))


def test_train_pixels_close_to_the_cpu_decoder(store, dec, pool):
    for seed, size in ((0, 32), (1, 64), (2, 112)):
        plan = P.epoch_plan(store.sizes, seed, 0)
        a = torch.cat([x for x, _ in dec.train_batches(plan, 8, size)]).float()
        b = torch.cat([x for x, _ in pool.train_batches(plan, 8, size)]).float()
        diff = (a - b).abs()
        assert diff.mean().item() < MEAN_ABS_MAX, (size, diff.mean().item())
        # the flips and crops agree: per image, the difference is far below that to the unflipped image
        per_image = diff.mean(dim=(1, 2, 3))
        unflipped = (a - b.flip(-1)).abs().mean(dim=(1, 2, 3))
        flipped = torch.from_numpy(plan.flips[:len(a)].copy())
        assert (per_image[flipped] < unflipped[flipped]).all()


def test_test_batches_shapes_and_pixels(store, dec, pool):
    got = list(dec.test_batches(16, 72, 64))
    assert [tuple(x.shape) for x, _ in got] == [(16, 3, 64, 64), (16, 3, 64, 64), (8, 3, 64, 64)]
    np.testing.assert_array_equal(torch.cat([y for _, y in got]).numpy(), store.labels)
    want = torch.cat([x for x, _ in pool.test_batches(16, 72, 64)]).float()
    assert (torch.cat([x for x, _ in got]).float() - want).abs().mean().item() < MEAN_ABS_MAX
    idx = np.array([5, 3, 17, 0])
    sub = list(dec.test_batches(3, 72, 64, indices=idx))
    np.testing.assert_array_equal(torch.cat([y for _, y in sub]).numpy(), store.labels[idx])
    full = torch.cat([x for x, _ in got])
    assert torch.equal(torch.cat([x for x, _ in sub]), full[idx])
    with pytest.raises(ValueError, match="crop"):
        dec.test_batches(8, 20, 64)


def test_bad_plans_are_rejected(store, dec):
    plan = P.epoch_plan(store.sizes * 3, 0, 0)  # boxes drawn for larger images
    with pytest.raises(ValueError, match="boxes"):
        dec.train_batches(plan, 8, 32)
    with pytest.raises(ValueError, match="start_step"):
        dec.train_batches(P.epoch_plan(store.sizes, 0, 0), 8, 32, start_step=99)


def test_streamed_run_trains_with_dali(tmp_path, capsys):
    from tstudy import RunConfig
    from tstudy.engine import RunEnv, train_run
    from tstudy.store import DONE, RunStore

    for split in ("train", "val"):
        make_folder(tmp_path / "imgs" / split, n=24 if split == "train" else 9, seed=1 if split == "val" else 0)
    cfg = RunConfig(dataset="imagefolder", model="cnn_s", image_size=32, augment="rrc_flip", batch_size=8,
                    epochs=1, lr=0.05)
    env = RunEnv(data_root=str(tmp_path / "imgs"), decoder="dali")
    assert train_run(cfg, RunStore(tmp_path / "res", "s"), env).status == DONE
    assert isinstance(env.data(cfg).train_pool, DaliDecoder)
    if not torch.cuda.is_available():
        assert "DALI decodes on the CPU" in capsys.readouterr().err


def _mean_abs(dec, pool, plan, bs, size):
    a = torch.cat([x for x, _ in dec.train_batches(plan, bs, size)]).float()
    b = torch.cat([x for x, _ in pool.train_batches(plan, bs, size)]).float()
    return (a - b).abs().mean().item()


@needs_tiny
def test_real_tiny_imagenet_pixels_close(tmp_path):
    """200 real Tiny-ImageNet JPEGs (64 px), RRC + flip to 64 and the test transform (72 -> 64).
    Measured: mean |difference| to DecoderPool about 0.2 grey levels (DALI 2.4, CPU pipeline)."""
    import zipfile

    sub = tmp_path / "sub.zip"
    with zipfile.ZipFile(TINY_ZIP) as src, zipfile.ZipFile(sub, "w") as dst:
        names = sorted(n for n in src.namelist() if n.endswith(".JPEG"))
        for n in names[:100] + names[-100:]:
            dst.writestr(n, src.read(n))
    s = PackedStore(build_store(sub, tmp_path / "store", progress=False))
    with DaliDecoder(s, "cpu", threads=2) as dec, DecoderPool(s, pin_memory=False) as pool:
        assert _mean_abs(dec, pool, P.epoch_plan(s.sizes, 0, 0), 32, 64) < MEAN_ABS_MAX
        a = torch.cat([x for x, _ in dec.test_batches(64, 72, 64)]).float()
        b = torch.cat([x for x, _ in pool.test_batches(64, 72, 64)]).float()
        assert (a - b).abs().mean().item() < MEAN_ABS_MAX


def test_imagenet_like_224_pixels_close(tmp_path):
    """Smooth synthetic 500x375 / 375x500 JPEGs (ImageNet-like), RRC + flip to 224, test 256 -> 224."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(8):
        h, w = (375, 500) if i % 2 else (500, 375)
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([128 + 100 * np.sin(x / (20 + 5 * c + i) + y / (35 + 3 * c)) for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        d = tmp_path / "src" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
    s = PackedStore(build_store(tmp_path / "src", tmp_path / "store", progress=False))
    with DaliDecoder(s, "cpu", threads=2) as dec, DecoderPool(s, pin_memory=False) as pool:
        assert _mean_abs(dec, pool, P.epoch_plan(s.sizes, 0, 0), 4, 224) < MEAN_ABS_MAX
        a = torch.cat([x for x, _ in dec.test_batches(4, 256, 224)]).float()
        b = torch.cat([x for x, _ in pool.test_batches(4, 256, 224)]).float()
        assert (a - b).abs().mean().item() < MEAN_ABS_MAX
