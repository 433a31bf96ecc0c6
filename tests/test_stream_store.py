"""Packed JPEG stores (tstudy/data/packed.py): build, reopen, re-encode, resume, zip and ILSVRC-val layouts."""
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from tstudy.data import packed
from tstudy.data.packed import PackedStore, StoreError, build_store

CLASSES = ["ant", "bee", "cat"]


def make_folder(root, n=40, seed=0):
    """An ImageFolder of n synthetic images 30-120 px: RGB JPEGs, one greyscale JPEG, one CMYK JPEG, one PNG named .jpg."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        d = root / CLASSES[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(30, 121, 2))
        base = rng.integers(0, 256, (1, 1, 3)).astype(np.float64)
        img = np.clip(base + rng.normal(0, 40, (h, w, 3)).cumsum(axis=1) / 8, 0, 255).astype(np.uint8)
        path = d / f"img_{i:03d}.jpg"
        if i == 5:
            Image.fromarray(img[:, :, 0], "L").save(path, format="JPEG", quality=85)
        elif i == 7:
            Image.fromarray(img).save(path, format="PNG")  # a PNG in disguise
        elif i == 9:
            Image.fromarray(img).convert("CMYK").save(path, format="JPEG", quality=85)
        else:
            Image.fromarray(img).save(path, format="JPEG", quality=85)
        files.append(path)
    return files


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "src"
    return root, make_folder(root)


def test_build_and_reopen(folder, tmp_path):
    root, files = folder
    dest = build_store(root, tmp_path / "store", progress=False)
    s = PackedStore(dest)
    assert len(s) == len(files) and s.classes == CLASSES
    by_name = {f"{f.parent.name}/{f.name}": f for f in files}
    assert sorted(s.names.tolist()) == sorted(by_name)
    assert s.labels.dtype == np.int64 and s.sizes.shape == (len(files), 2)
    for i, name in enumerate(s.names):
        f = by_name[str(name)]
        assert s.labels[i] == CLASSES.index(f.parent.name)
        with Image.open(f) as im:
            assert tuple(s.sizes[i]) == (im.height, im.width)
            plain = im.format == "JPEG" and im.mode == "RGB"
        stored = bytes(s.jpeg(i))
        if plain:
            assert stored == f.read_bytes()
        else:  # greyscale, CMYK and PNG: re-encoded as RGB JPEG
            assert stored != f.read_bytes()
            with Image.open(io.BytesIO(stored)) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
    # classes in order, images sorted within a class
    assert (np.diff(s.labels) >= 0).all()
    assert sum(bytes(s.jpeg(i)) != by_name[str(n)].read_bytes() for i, n in enumerate(s.names)) == 3


def test_pickle_is_cheap_and_reopens(folder, tmp_path):
    root, _ = folder
    s = PackedStore(build_store(root, tmp_path / "store", progress=False))
    s.jpeg(0)  # map opened
    blob = pickle.dumps(s)
    assert len(blob) < 500
    t = pickle.loads(blob)
    assert bytes(t.jpeg(3)) == bytes(s.jpeg(3))
    np.testing.assert_array_equal(t.labels, s.labels)


def test_max_side(folder, tmp_path):
    root, files = folder
    full = PackedStore(build_store(root, tmp_path / "full", progress=False))
    small = PackedStore(build_store(root, tmp_path / "small", max_side=64, progress=False))
    assert small.sizes.max() <= 64
    for i in range(len(full)):
        h, w = full.sizes[i]
        if max(h, w) > 64:
            s = 64 / max(h, w)
            assert tuple(small.sizes[i]) == (max(1, round(h * s)), max(1, round(w * s)))
            with Image.open(io.BytesIO(bytes(small.jpeg(i)))) as im:
                assert (im.height, im.width) == tuple(small.sizes[i]) and im.format == "JPEG"
        else:
            assert bytes(small.jpeg(i)) == bytes(full.jpeg(i))
    assert small.meta["max_side"] == 64


def _same_store(a, b):
    for f in ("data.bin", "index.npz"):
        if f == "index.npz":
            with np.load(a / f) as x, np.load(b / f) as y:
                assert sorted(x.files) == sorted(y.files)
                for k in x.files:
                    np.testing.assert_array_equal(x[k], y[k])
        else:
            assert (a / f).read_bytes() == (b / f).read_bytes()


def test_resume_after_interrupted_build(folder, tmp_path, monkeypatch):
    root, _ = folder
    ref = build_store(root, tmp_path / "ref", progress=False)

    class Killed(Exception):
        pass

    def hook(i):
        if i == 22:
            raise Killed

    monkeypatch.setattr(packed, "_after_item", hook)
    dest = tmp_path / "store"
    with pytest.raises(Killed):
        build_store(root, dest, progress=False, checkpoint_every=5)
    assert not (dest / "meta.json").exists() and not (dest / "data.bin").exists()
    assert (dest / "progress.json").exists()
    # the partial file ran past the last checkpoint (20 images): resume truncates it
    calls = []
    monkeypatch.setattr(packed, "_after_item", calls.append)
    build_store(root, dest, progress=False, checkpoint_every=5)
    assert calls[0] == 20 and calls[-1] == 39
    _same_store(ref, dest)
    assert sorted(os.listdir(dest)) == ["data.bin", "index.npz", "meta.json"]


def test_finished_store_not_rebuilt(folder, tmp_path, monkeypatch):
    root, _ = folder
    dest = build_store(root, tmp_path / "store", progress=False)
    before = (dest / "data.bin").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(packed, "_prepare", boom)
    assert build_store(root, dest, progress=False) == dest
    assert build_store(root / "gone", dest, progress=False) == dest  # the source is not read
    assert (dest / "data.bin").stat().st_mtime_ns == before
    # a store packed with max_side stays so when asked for without it (and vice versa)
    assert build_store(root, dest, max_side=32, progress=False) == dest
    assert PackedStore(dest).meta["max_side"] is None


def test_checkpoint_of_other_parameters_ignored(folder, tmp_path, monkeypatch):
    """An unfinished build resumed with another max_side starts over (and ends like a fresh build)."""
    root, _ = folder

    def hook(i):
        if i == 12:
            raise RuntimeError("killed")

    monkeypatch.setattr(packed, "_after_item", hook)
    with pytest.raises(RuntimeError):
        build_store(root, tmp_path / "s", progress=False, checkpoint_every=4)
    monkeypatch.setattr(packed, "_after_item", lambda i: None)
    build_store(root, tmp_path / "s", max_side=50, progress=False)
    _same_store(build_store(root, tmp_path / "ref", max_side=50, progress=False), tmp_path / "s")


def test_progress_bar_on_stderr(folder, tmp_path, capsys):
    root, _ = folder
    build_store(root, tmp_path / "store", progress=True)
    cap = capsys.readouterr()
    assert "40/40" in cap.err and cap.out == ""


def test_zip_class_tree(folder, tmp_path):
    """A zip of a Tiny-ImageNet-like train tree: tiny-imagenet-200/train/<wnid>/images/*.JPEG."""
    root, files = folder
    z = tmp_path / "train.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "\n".join(CLASSES))
        for f in files:
            zf.write(f, f"tiny-imagenet-200/train/{f.parent.name}/images/{f.name}")
        zf.writestr(f"tiny-imagenet-200/train/{CLASSES[0]}/{CLASSES[0]}_boxes.txt", "x")
    all_classes = ["aaa", *CLASSES, "zzz"]
    s = PackedStore(build_store(z, tmp_path / "store", progress=False, classes=all_classes))
    d = PackedStore(build_store(root, tmp_path / "ref", progress=False))
    assert s.classes == all_classes and len(s) == len(d)
    np.testing.assert_array_equal(s.labels, d.labels + 1)
    assert all(bytes(s.jpeg(i)) == bytes(d.jpeg(i)) for i in range(len(s)))
    with pytest.raises(StoreError):
        build_store(z, tmp_path / "bad", progress=False, classes=["ant"])


def test_ilsvrc_val_layout(tmp_path):
    src = tmp_path / "val"
    make_folder(tmp_path / "tmp", n=6)
    src.mkdir()
    wnids = ["n02", "n01", "n03", "n01", "n02", "n03"]
    for i, f in enumerate(sorted((tmp_path / "tmp").rglob("*.jpg"))):
        f.rename(src / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 3 4 {w} 5 6 7 8\n" for i, w in reversed(list(enumerate(wnids)))))
    classes = ["n01", "n02", "n03"]
    s = PackedStore(build_store(src, tmp_path / "store", layout="ilsvrc_val", classes=classes, progress=False))
    assert s.labels.tolist() == [classes.index(w) for w in wnids]
    assert s.names.tolist() == [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(6)]
    # a two-column text file works too
    txt = tmp_path / "gt.txt"
    txt.write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {w}\n" for i, w in enumerate(wnids)))
    t = PackedStore(build_store(src, tmp_path / "store2", layout="ilsvrc_val", classes=classes,
                                ground_truth=txt, progress=False))
    np.testing.assert_array_equal(t.labels, s.labels)
    with pytest.raises(StoreError):
        build_store(src, tmp_path / "s3", layout="ilsvrc_val", progress=False)


def test_errors(tmp_path):
    with pytest.raises(StoreError):
        build_store(tmp_path / "missing", tmp_path / "s", progress=False)
    with pytest.raises(StoreError):
        PackedStore(tmp_path)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(StoreError):
        build_store(tmp_path / "empty", tmp_path / "s", progress=False)
    with pytest.raises(StoreError):
        build_store(tmp_path / "empty", tmp_path / "s", layout="nope", progress=False)


def test_workers_build_the_same_store(folder, tmp_path, monkeypatch):
    """Re-encoding in worker processes, interrupted and resumed, gives the store of a serial build."""
    root, _ = folder
    ref = build_store(root, tmp_path / "ref", max_side=50, progress=False)

    def hook(i):
        if i == 25:
            raise KeyboardInterrupt

    monkeypatch.setattr(packed, "_after_item", hook)
    with pytest.raises(KeyboardInterrupt):
        build_store(root, tmp_path / "s", max_side=50, progress=False, checkpoint_every=8, workers=2)
    monkeypatch.setattr(packed, "_after_item", lambda i: None)
    build_store(root, tmp_path / "s", max_side=50, progress=False, workers=2)
    _same_store(ref, tmp_path / "s")


def test_val_wnids_outside_the_train_classes(tmp_path):
    """A train class subset with the full flat val: a one-line StoreError naming the unknown wnids and
    the ground-truth file (a bare KeyError before); through stores(), a DataError."""
    from tstudy.data import DataError
    from tstudy.data.imagenet import stores

    root = tmp_path / "imagenet"
    make_folder(root / "train", n=6)
    for c in ("bee", "cat"):  # the subset: ant only
        for f in (root / "train" / c).iterdir():
            f.unlink()
        (root / "train" / c).rmdir()
    val = root / "val"
    val.mkdir()
    make_folder(tmp_path / "v", n=3)
    for i, f in enumerate(sorted((tmp_path / "v").rglob("*.jpg"))):
        f.rename(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 3 4\n" for i, w in enumerate(["ant", "bee", "cat"])))
    with pytest.raises(StoreError, match=r"LOC_val_solution.csv.*2 wnid\(s\) not among the train classes: \['bee', 'cat'\]"):
        build_store(val, tmp_path / "s", layout="ilsvrc_val", classes=["ant"], progress=False)
    with pytest.raises(DataError, match="not among the train classes") as e:
        stores("imagenet", root)
    assert "\n" not in str(e.value)


def test_store_refuses_a_changed_source(folder, tmp_path):
    """A finished store whose source now lists other images (added, removed, resized) is refused with
    a one-line StoreError saying to delete the store; a source whose images are gone, and a store
    without the listing record (older versions), are used as they are."""
    import json
    import shutil

    from tstudy.data import DataError
    from tstudy.data.imagenet import stores

    root, files = folder
    dest = build_store(root, tmp_path / "store", progress=False)
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["source_listing"]["count"] == len(files)
    assert build_store(root, dest, progress=False) == dest  # unchanged: fine
    extra = root / "ant" / "img_999.jpg"
    shutil.copy(files[0], extra)
    with pytest.raises(StoreError, match=r"changed since it was packed .*\(40 images then, 41 now\); delete"):
        build_store(root, dest, progress=False)
    extra.unlink()
    files[1].write_bytes(files[1].read_bytes() + b"\0")
    with pytest.raises(StoreError, match="40 images, other files or sizes"):
        build_store(root, dest, progress=False)
    meta.pop("source_listing")
    (dest / "meta.json").write_text(json.dumps(meta))
    assert build_store(root, dest, progress=False) == dest  # an old store: no record, used as is
    # through stores(): a DataError of one line; the JPEG files deleted after packing: fine
    ds = tmp_path / "ds"
    shutil.copytree(root, ds / "train")
    shutil.copytree(root, ds / "val")
    train, val = stores("imagefolder", ds)
    (ds / "val" / "cat" / "img_002.jpg").unlink()
    with pytest.raises(DataError, match="val changed since it was packed") as e:
        stores("imagefolder", ds)
    assert "\n" not in str(e.value)
    for split in ("train", "val"):
        shutil.rmtree(ds / split)
    (ds / "train" / "ant").mkdir(parents=True)  # empty folders left behind: still "gone"
    assert stores("imagefolder", ds) == (train, val)


def test_index_data_mismatch_is_a_store_error(folder, tmp_path, monkeypatch):
    """The packed index is checked against the data with a StoreError (an assert vanished under -O)."""
    import types

    root, _ = folder
    fake = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    fake.fromfile = lambda *a, **k: np.fromfile(*a, **k)[:-4]  # one row (4 int64) short
    monkeypatch.setattr(packed, "np", fake)
    with pytest.raises(StoreError, match=r"index \(39 rows\) does not match the data \(40 images"):
        build_store(root, tmp_path / "s", progress=False)
