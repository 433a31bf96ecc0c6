"""Dataset loaders: CIFAR, Fashion-MNIST and imagefolder on tiny files written here; Tiny-ImageNet on
a subset of the real shared zips (``../shared/data/tiny-imagenet-200`` beside the repository)."""
from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tstudy.data import DATASETS, DataError, channel_stats, load_dataset, resize_uint8
from tstudy.data import cifar, files, tinyimagenet

SHARED_TINY = Path(__file__).parents[1].parent / "shared" / "data" / "tiny-imagenet-200"
TINY_TRAIN0 = SHARED_TINY / "tiny-imagenet-200-train-0.zip"  # one of the four train zips: a real, small sample
_HAVE_TINY = (SHARED_TINY / "tiny-imagenet-200-val.zip").is_file()
if os.environ.get("CI") and not _HAVE_TINY:  # CI runs with ../shared beside the clone: never skip there
    raise RuntimeError(f"CI: Tiny-ImageNet zips not found in {SHARED_TINY}")
needs_tiny = pytest.mark.skipif(not _HAVE_TINY, reason=f"Tiny-ImageNet zips not found in {SHARED_TINY}")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real data or cache from HOME, ./data or $TSTUDY_DATA; the cache goes to tmp."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TSTUDY_DATA", raising=False)
    monkeypatch.setenv("TSTUDY_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def test_registry_names():
    assert {"cifar10", "cifar100", "tinyimagenet", "imagefolder", "fashionmnist", "digits"} <= set(DATASETS.names())


def test_channel_stats_matches_float64():
    x = torch.randint(0, 256, (50, 3, 9, 7), dtype=torch.uint8)
    mean, std = channel_stats(x)
    xf = x.double() / 255
    assert np.allclose(mean, xf.mean(dim=(0, 2, 3)).numpy(), atol=1e-12)
    assert np.allclose(std, xf.std(dim=(0, 2, 3)).numpy(), atol=1e-12)


# ------------------------------------------------------------------------------------- CIFAR

def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(rng, n: int, label_keys: dict[str, int]) -> dict:
    d = {"batch_label": "batch", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         "filenames": [f"img_{i}.png" for i in range(n)]}
    d.update({k: rng.integers(0, m, n).tolist() for k, m in label_keys.items()})
    return d


def write_cifar10(root: Path, n: int = 3) -> dict[str, dict]:
    """torchvision's cifar-10-batches-py layout with n images per batch; returns the batches."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {name: _batch(rng, n, {"labels": 10}) for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    for name, d in batches.items():
        _dump(folder / name, d)
    _dump(folder / "batches.meta", {"num_cases_per_batch": n, "num_vis": 3072,
                                    "label_names": [f"c{i}" for i in range(10)]})
    return batches


def write_cifar100(root: Path, n: int = 5) -> dict[str, dict]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {name: _batch(rng, n, {"fine_labels": 100, "coarse_labels": 20}) for name in ("train", "test")}
    for name, d in batches.items():
        _dump(folder / name, d)
    _dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                            "coarse_label_names": [f"s{i}" for i in range(20)]})
    return batches


def test_cifar10_round_trip(tmp_path):
    b = write_cifar10(tmp_path / "r")
    d = load_dataset("cifar10", tmp_path / "r")
    train = np.concatenate([b[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape == (15, 3, 32, 32)
    assert np.array_equal(d.train_x.numpy(), train.reshape(-1, 3, 32, 32))
    assert d.train_x[0, 1, 2, 3] == train[0, 1024 + 2 * 32 + 3]  # R plane, G plane, B plane; row-major
    assert d.train_y.tolist() == sum((b[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert d.test_y.dtype == torch.int64 and d.test_y.tolist() == b["test_batch"]["labels"]
    assert np.array_equal(d.test_x.numpy(), b["test_batch"]["data"].reshape(-1, 3, 32, 32))
    assert d.num_classes == 10 and d.class_names[3] == "c3" and d.augment == "crop_flip"
    assert d.mean == channel_stats(d.train_x)[0] and d.std == channel_stats(d.train_x)[1]
    with pytest.raises(DataError, match="labels: cifar10"):
        load_dataset("cifar10", tmp_path / "r", labels="coarse")


def test_cifar100_fine_coarse_and_resize(tmp_path):
    b = write_cifar100(tmp_path)
    fine = load_dataset("cifar100", tmp_path)
    coarse = load_dataset("cifar100", tmp_path, labels="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.train_y.tolist() == b["train"]["fine_labels"]
    assert coarse.test_y.tolist() == b["test"]["coarse_labels"]
    assert coarse.class_names == [f"s{i}" for i in range(20)]
    assert torch.equal(fine.train_x, coarse.train_x)
    small = load_dataset("cifar100", tmp_path / "cifar-100-python", image_size=16)  # root = the folder itself
    assert small.train_x.shape == (5, 3, 16, 16) and torch.equal(small.test_x, resize_uint8(fine.test_x, 16))
    with pytest.raises(DataError, match="labels: cifar100 supports 'fine', 'coarse'"):
        load_dataset("cifar100", tmp_path, labels="superclass")


def test_cifar_missing_lists_paths(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cifar100: data not found")
    for p in (tmp_path / "nowhere" / "cifar-100-python", (Path("data") / "cifar-100-python").absolute(),
              tmp_path / "home" / ".cache" / "tstudy" / "data" / "cifar-100-python"):
        assert str(p) in msg
    assert "download=True" in msg


def test_cifar_download_goes_to_first_root(tmp_path, monkeypatch):
    calls = []

    def fake_download(fmt, root):
        calls.append(root)
        write_cifar10(root)

    monkeypatch.setattr(cifar, "download", fake_download)
    with pytest.raises(DataError):
        load_dataset("cifar10", tmp_path / "dl")
    d = load_dataset("cifar10", tmp_path / "dl", download=True)
    assert calls == [tmp_path / "dl"] and len(d.train_x) == 15
    load_dataset("cifar10", tmp_path / "dl", download=True)
    assert len(calls) == 1  # found now: no second download


# ------------------------------------------------------------------------------ Fashion-MNIST

def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fashion(folder: Path, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    """The 4 IDX files: train ones gzipped, test ones plain."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    a = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
         "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
         "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
         "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, arr in a.items():
        if name.startswith("train"):
            (folder / (name + ".gz")).write_bytes(gzip.compress(_idx(arr)))
        else:
            (folder / name).write_bytes(_idx(arr))
    return a


def test_fashionmnist_gz_and_plain(tmp_path):
    a = write_fashion(tmp_path / "FashionMNIST" / "raw")
    d = load_dataset("fashionmnist", tmp_path)
    assert d.train_x.shape == (6, 1, 28, 28) and d.test_x.shape == (4, 1, 28, 28)
    assert np.array_equal(d.train_x[:, 0].numpy(), a["train-images-idx3-ubyte"])
    assert np.array_equal(d.test_x[:, 0].numpy(), a["t10k-images-idx3-ubyte"])
    assert d.train_y.dtype == torch.int64 and d.test_y.tolist() == a["t10k-labels-idx1-ubyte"].tolist()
    assert d.num_classes == 10 and d.class_names[9] == "Ankle boot" and d.augment == "crop_flip"
    assert load_dataset("fashionmnist", tmp_path, image_size=32).train_x.shape == (6, 1, 32, 32)


def test_fashionmnist_bad_and_missing(tmp_path):
    write_fashion(tmp_path / "fashionmnist")
    (tmp_path / "fashionmnist" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(DataError, match="bad magic"):
        load_dataset("fashionmnist", tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset("fashionmnist", tmp_path / "none")
    msg = str(e.value)
    assert "/usr/share/datasets/fashion-mnist" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert str(tmp_path / "none" / "FashionMNIST" / "raw") in msg


# -------------------------------------------------------------------------------- imagefolder

def write_imagefolder(root: Path, test_dir: str = "val") -> None:
    """Two classes of solid-colour PNGs of mixed sizes and modes."""
    specs = {"train": {"zebra": [("RGB", (10, 12), (200, 10, 30)), ("L", (9, 9), 77)],
                       "apple": [("RGBA", (6, 20), (1, 2, 3, 255)), ("RGB", (8, 8), (4, 5, 6)),
                                 ("RGB", (8, 8), (7, 8, 9))]},
             test_dir: {"zebra": [("RGB", (16, 16), (90, 91, 92))], "apple": [("L", (5, 5), 250)]}}
    for split, classes in specs.items():
        for cls, images in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i, (mode, size, colour) in enumerate(images):
                Image.new(mode, size, colour).save(root / split / cls / f"img{i}.png")
    (root / "train" / "apple" / "notes.txt").write_text("not an image")


def test_imagefolder(tmp_path):
    write_imagefolder(tmp_path / "birds")
    d = load_dataset("imagefolder", tmp_path / "birds", image_size=8)
    assert d.class_names == ["apple", "zebra"] and d.num_classes == 2 and d.augment == "crop_flip"
    assert d.train_x.shape == (5, 3, 8, 8) and d.test_x.shape == (2, 3, 8, 8)
    assert d.train_y.tolist() == [0, 0, 0, 1, 1] and d.test_y.tolist() == [0, 1]
    assert d.train_x[0, :, 3, 3].tolist() == [1, 2, 3]  # RGBA -> RGB
    assert d.train_x[4].unique().tolist() == [77]  # grey -> RGB
    assert d.test_x[1, :, 0, 0].tolist() == [90, 91, 92]
    again = load_dataset("imagefolder", tmp_path / "birds", image_size=8)  # from the cache
    assert torch.equal(again.train_x, d.train_x)
    assert len(list((tmp_path / "cache" / "decoded").glob("imagefolder-*.npz"))) == 1


def test_imagefolder_test_dir_and_data_root(tmp_path, monkeypatch):
    write_imagefolder(tmp_path / "store" / "imagefolder", test_dir="test")
    monkeypatch.setenv("TSTUDY_DATA", str(tmp_path / "store"))
    d = load_dataset("imagefolder", image_size=4)
    assert d.test_x.shape == (2, 3, 4, 4)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="^image_size: the imagefolder dataset needs image_size"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", tmp_path / "nothing", image_size=8)
    assert str(tmp_path / "nothing") + "/train+val|test" in str(e.value)
    write_imagefolder(tmp_path / "bad")
    (tmp_path / "bad" / "val" / "pear").mkdir()
    with pytest.raises(DataError, match="pear is not among the train classes"):
        load_dataset("imagefolder", tmp_path / "bad", image_size=8)
    (tmp_path / "bad" / "val" / "pear").rmdir()
    (tmp_path / "bad" / "val" / "apple" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode image .*broken.png"):
        load_dataset("imagefolder", tmp_path / "bad", image_size=8)


# ------------------------------------------------------------------------------------- caching

def test_cache_atomic_and_rebuilt_when_corrupt(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": np.arange(5, dtype=np.uint8)}

    a = files.cached("demo", ["k", 1], build)
    b = files.cached("demo", ["k", 1], build)
    assert len(calls) == 1 and np.array_equal(a["x"], b["x"])
    [path] = (tmp_path / "cache" / "decoded").iterdir()  # no temp file left behind
    path.write_bytes(b"garbage")
    files.cached("demo", ["k", 1], build)
    assert len(calls) == 2
    files.cached("demo", ["k", 2], build)
    assert len(calls) == 3


# ------------------------------------------------------------------------------ Tiny-ImageNet

def _subset_spec(n_train: int = 10) -> tuple[list[str], dict[str, list[str]], str]:
    """3 classes of train shard 0 (one holding a greyscale JPEG), n_train member names each."""
    with zipfile.ZipFile(TINY_TRAIN0) as z:
        jpegs = sorted((n for n in z.namelist() if n.endswith(".JPEG")), key=files.natural_key)
        grey = next(n for n in jpegs if Image.open(io.BytesIO(z.read(n))).mode == "L")
    by_class: dict[str, list[str]] = {}
    for n in jpegs:
        by_class.setdefault(n.split("/")[2], []).append(n)
    grey_wnid = grey.split("/")[2]
    wnids = [grey_wnid] + [w for w in sorted(by_class) if w != grey_wnid][:2]
    chosen = {w: by_class[w][:n_train] for w in wnids}
    if grey not in chosen[grey_wnid]:
        chosen[grey_wnid][-1] = grey
    return wnids, chosen, grey


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-class Tiny-ImageNet subset from the real zips, as an extracted folder and as two zips."""
    if not SHARED_TINY.is_dir():
        pytest.skip(f"Tiny-ImageNet zips not found in {SHARED_TINY}")
    base = tmp_path_factory.mktemp("tiny")
    wnids, chosen, grey = _subset_spec()
    folder = base / "ext" / "tiny-imagenet-200"
    with zipfile.ZipFile(TINY_TRAIN0) as z:
        for names in chosen.values():
            for n in names:
                (base / "ext" / n).parent.mkdir(parents=True, exist_ok=True)
                (base / "ext" / n).write_bytes(z.read(n))
    with zipfile.ZipFile(SHARED_TINY / "tiny-imagenet-200-val.zip") as z:
        ann = [ln for ln in z.read("tiny-imagenet-200/val/val_annotations.txt").decode().splitlines()
               if ln.split("\t")[1] in wnids]
        (folder / "val" / "images").mkdir(parents=True)
        for ln in ann:
            name = ln.split("\t")[0]
            (folder / "val" / "images" / name).write_bytes(z.read(f"tiny-imagenet-200/val/images/{name}"))
    (folder / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    (folder / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # not sorted on disk
    zips = base / "zips"
    zips.mkdir()
    for zname, sub in (("tiny-imagenet-200-train-0.zip", "train"), ("tiny-imagenet-200-val.zip", "val")):
        with zipfile.ZipFile(zips / zname, "w", zipfile.ZIP_STORED) as z:
            z.write(folder / "wnids.txt", "tiny-imagenet-200/wnids.txt")
            for p in sorted((folder / sub).rglob("*")):
                if p.is_file():
                    z.write(p, "tiny-imagenet-200/" + p.relative_to(folder).as_posix())
    return {"folder": folder, "zips": zips, "wnids": sorted(wnids), "chosen": chosen, "grey": grey,
            "ann": [ln.split("\t") for ln in ann]}


@needs_tiny
def test_tinyimagenet_folder(tiny):
    d = load_dataset("tinyimagenet", tiny["folder"].parent)
    assert d.class_names == tiny["wnids"] and d.num_classes == 3 and d.augment == "crop_flip"
    assert d.train_x.shape == (30, 3, 64, 64) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (150, 3, 64, 64) and torch.bincount(d.test_y).tolist() == [50, 50, 50]
    assert d.train_y.tolist() == [0] * 10 + [1] * 10 + [2] * 10  # by sorted wnid
    ann = sorted(tiny["ann"], key=lambda t: files.natural_key(t[0]))
    assert d.test_y.tolist() == [tiny["wnids"].index(a[1]) for a in ann]
    first = np.asarray(Image.open(tiny["folder"] / "val" / "images" / ann[0][0]).convert("RGB"))
    assert np.array_equal(d.test_x[0].permute(1, 2, 0).numpy(), first)
    # the greyscale JPEG: RGB with three equal planes, equal to PIL's L decode
    wnid = tiny["grey"].split("/")[2]
    names = sorted(tiny["chosen"][wnid], key=files.natural_key)
    i = tiny["wnids"].index(wnid) * 10 + names.index(tiny["grey"])
    grey = np.asarray(Image.open(tiny["folder"].parent / tiny["grey"]))
    assert grey.ndim == 2 and all(np.array_equal(d.train_x[i, c].numpy(), grey) for c in range(3))
    assert np.allclose(d.mean, channel_stats(d.train_x)[0])


@needs_tiny
def test_tinyimagenet_zips_resize_and_cache(tiny, tmp_path, monkeypatch):
    ref = load_dataset("tinyimagenet", tiny["folder"].parent)
    z = load_dataset("tinyimagenet", tiny["zips"])
    assert torch.equal(z.train_x, ref.train_x) and torch.equal(z.test_x, ref.test_x)
    assert torch.equal(z.train_y, ref.train_y) and torch.equal(z.test_y, ref.test_y)
    small = load_dataset("tinyimagenet", tiny["zips"], image_size=32)
    assert small.train_x.shape == (30, 3, 32, 32) and small.test_x.shape == (150, 3, 32, 32)
    assert torch.equal(small.train_x, resize_uint8(ref.train_x, 32))
    assert small.mean == channel_stats(small.train_x)[0]
    # both sizes now come from the cache, without decoding
    monkeypatch.setattr(tinyimagenet, "decode_splits", lambda *a: pytest.fail("decoded despite the cache"))
    assert torch.equal(load_dataset("tinyimagenet", tiny["zips"], image_size=32).train_x, small.train_x)
    assert torch.equal(load_dataset("tinyimagenet", tiny["zips"]).test_x, ref.test_x)
    # a source file that changes invalidates the cache
    p = tiny["zips"] / "tiny-imagenet-200-val.zip"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    with pytest.raises(pytest.fail.Exception, match="decoded despite the cache"):
        load_dataset("tinyimagenet", tiny["zips"])


@needs_tiny
def test_tinyimagenet_shared_layout_found(tmp_path):
    """`root/tiny-imagenet-200/tiny-imagenet-200*.zip`, as in the shared data, is found (index only)."""
    src, tried = tinyimagenet.find_source(SHARED_TINY.parent)
    try:
        assert isinstance(src, tinyimagenet.ZipSource) and len(src.paths) >= 2
        index = tinyimagenet.build_index(src)
    finally:
        src.close()
    assert len(index.wnids) == 200 and len(index.val) == 10_000
    assert len(index.train) % 500 == 0 and len(index.train) >= 500


@needs_tiny
def test_tinyimagenet_missing(tmp_path):
    (tmp_path / "r" / "tiny-imagenet-200").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "r" / "tiny-imagenet-200-train-9.zip", "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "n0\n")
    with pytest.raises(DataError) as e:
        load_dataset("tinyimagenet", tmp_path / "r")
    msg = str(e.value)
    assert msg.startswith("tinyimagenet: data not found") and "\n" not in msg
    assert f"{tmp_path / 'r' / 'tiny-imagenet-200'}/" in msg
    assert "lacking val/val_annotations.txt" in msg and "tiny-imagenet-200.zip" in msg


@needs_tiny
def test_tinyimagenet_full_val_zip(tiny, tmp_path, caplog):
    """The real val zip, all 10,000 images, with a 30-image train zip: 197 classes lack train images."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "tiny-imagenet-200-val.zip").symlink_to(SHARED_TINY / "tiny-imagenet-200-val.zip")
    with zipfile.ZipFile(root / "tiny-imagenet-200-train-x.zip", "w") as z:
        for p in sorted((tiny["folder"] / "train").rglob("*.JPEG")):
            z.write(p, "tiny-imagenet-200/" + p.relative_to(tiny["folder"]).as_posix())
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="tstudy.data.tinyimagenet"):
        d = load_dataset("tinyimagenet", root)
    elapsed = time.perf_counter() - t0
    print(f"full val zip: {elapsed:.1f} s")
    assert "197 of 200 classes have no training images" in caplog.text
    assert d.num_classes == 200 and d.test_x.shape == (10_000, 3, 64, 64)
    assert torch.bincount(d.test_y, minlength=200).tolist() == [50] * 200
    assert sorted(set(d.train_y.tolist())) == [d.class_names.index(w) for w in tiny["wnids"]]
    assert d.class_names == sorted(d.class_names)
    assert elapsed < 60


def test_imagefolder_one_listing_for_both_paths(tmp_path):
    """The in-memory loader, the packed store and preflight's class list agree on classes, images and
    their order (val_fraction holds out the same images): an empty class folder is a class, a
    dot-folder and images in sub-folders are skipped, a .gif is an image, numbers sort naturally."""
    from tstudy.data.imagenet import class_names, stores
    from tstudy.data.packed import PackedStore

    root = tmp_path / "set"
    colours = iter(range(10, 250, 7))
    for split, cls, name in [("train", "apple", "img10.png"), ("train", "apple", "img2.png"),
                             ("train", "apple", "anim.gif"), ("train", "zebra", "img0.png"),
                             ("train", "zebra", "sub/deep.png"), ("train", ".hidden", "x.png"),
                             ("val", "apple", "v.png"), ("val", "zebra", "v.gif")]:
        (root / split / cls / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (next(colours), 0, 0)).save(root / split / cls / name)
    (root / "train" / "empty").mkdir()
    d = load_dataset("imagefolder", root, image_size=8)
    assert d.class_names == ["apple", "empty", "zebra"] == class_names("imagefolder", root)
    train, val = (PackedStore(p) for p in stores("imagefolder", root))
    assert train.classes == d.class_names == val.classes
    assert train.names.tolist() == ["apple/anim.gif", "apple/img2.png", "apple/img10.png", "zebra/img0.png"]
    assert train.labels.tolist() == d.train_y.tolist() == [0, 0, 0, 2]
    assert val.names.tolist() == ["apple/v.png", "zebra/v.gif"] and val.labels.tolist() == d.test_y.tolist()
