"""Decoders of the streamed data path (tstudy/data/decode.py): torchvision parity to the bit,
worker-count independence, exact resume, fixed shapes, clean shutdown, real Tiny-ImageNet JPEGs."""
import io
import multiprocessing as mp
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from tstudy.data import plan as P
from tstudy.data.decode import DecoderPool, decode_test, decode_train
from tstudy.data.packed import PackedStore, build_store

from test_data import TINY_TRAIN0 as TINY_ZIP, needs_tiny  # ../shared beside the checkout; never skipped under CI
from test_stream_store import make_folder  # synthetic mixed-size JPEGs (grey, CMYK, a disguised PNG)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    make_folder(tmp / "src")
    return PackedStore(build_store(tmp / "src", tmp / "store", progress=False))


@pytest.fixture(scope="module")
def pools(store):
    """Pools of 1 and 4 workers, started once for the module (spawning costs about a second each)."""
    with DecoderPool(store, workers=1) as p1, DecoderPool(store, workers=4, prefetch=2) as p4:
        yield {1: p1, 4: p4}


def _pil(store, i):
    return Image.open(io.BytesIO(bytes(store.jpeg(i)))).convert("RGB")


def test_decode_train_equals_torchvision(store):
    plan = P.epoch_plan(store.sizes, 0, 0)
    for pos in range(len(store)):
        i, box, flip = plan.order[pos], plan.boxes[pos], plan.flips[pos]
        for size in (32, 64):
            img = TF.resized_crop(_pil(store, i), *(int(v) for v in box), [size, size], antialias=True)
            if flip:
                img = TF.hflip(img)
            got = decode_train(store.jpeg(i), box, bool(flip), size)
            assert got.dtype == np.uint8 and got.shape == (size, size, 3)
            np.testing.assert_array_equal(got, np.asarray(img))


def test_decode_test_equals_torchvision(store):
    tf = T.Compose([T.Resize(72), T.CenterCrop(64)])
    for i in range(len(store)):
        got = decode_test(store.jpeg(i), 72, 64)
        assert got.shape == (64, 64, 3)
        np.testing.assert_array_equal(got, np.asarray(tf(_pil(store, i))))


def _train(pool, plan, bs=8, size=32, start=0):
    return list(pool.train_batches(plan, bs, size, start_step=start))


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_shapes_and_content(store):
    plan = P.epoch_plan(store.sizes, 1, 2)
    with DecoderPool(store) as pool:
        batches = _train(pool, plan, bs=12, size=24)
    assert len(batches) == plan.n_steps(12) == 3  # 40 images: the last 4 dropped
    for step, (x, y) in enumerate(batches):
        assert x.shape == (12, 3, 24, 24) and x.dtype == torch.uint8 and y.dtype == torch.int64
        order, boxes, flips = plan.batch(step, 12)
        np.testing.assert_array_equal(y.numpy(), store.labels[order])
        for k in (0, 11):
            ref = decode_train(store.jpeg(order[k]), boxes[k], flips[k], 24)
            np.testing.assert_array_equal(x[k].permute(1, 2, 0).numpy(), ref)


def test_worker_count_independence(store, pools):
    plan = P.epoch_plan(store.sizes, 5, 3)
    with DecoderPool(store, workers=0) as p0:
        ref = _train(p0, plan)
        ref_test = list(p0.test_batches(16, 36, 32))
    assert [x.shape[0] for x, _ in ref_test] == [16, 16, 8]
    for w, pool in pools.items():
        _assert_same(_train(pool, plan), ref)
        _assert_same(list(pool.test_batches(16, 36, 32)), ref_test)
    # another epoch differs
    other = _train(pools[4], P.epoch_plan(store.sizes, 5, 4))
    assert not torch.equal(other[0][0], ref[0][0])


@pytest.mark.parametrize("workers", [0, 4])
def test_start_step_resumes_exactly(store, pools, workers):
    plan = P.epoch_plan(store.sizes, 9, 0)
    pool = pools.get(workers) or DecoderPool(store)
    full = _train(pool, plan, bs=6)
    assert len(full) == 6
    _assert_same(_train(pool, plan, bs=6, start=4), full[4:])
    assert _train(pool, plan, bs=6, start=6) == []
    with pytest.raises(ValueError):
        pool.train_batches(plan, 6, 32, start_step=7)


def test_abandoned_iterator_and_reuse(store, pools):
    """Breaking out of an epoch cancels its pending work; the pool serves the next epoch normally."""
    plan = P.epoch_plan(store.sizes, 0, 1)
    pool = pools[4]
    it = pool.train_batches(plan, 4, 32)
    first = next(it)
    it.close()
    again = _train(pool, plan, bs=4)
    assert torch.equal(again[0][0], first[0])


def test_interleaved_iterators(store, pools):
    """A test pass in the middle of a training epoch, on the same pool (as a mid-epoch evaluation)."""
    plan = P.epoch_plan(store.sizes, 3, 3)
    with DecoderPool(store) as p0:
        ref, ref_test = _train(p0, plan, bs=4), list(p0.test_batches(8, 36, 32))
    for pool in pools.values():
        it = pool.train_batches(plan, 4, 32)
        got = [next(it), next(it)]
        _assert_same(list(pool.test_batches(8, 36, 32)), ref_test)
        _assert_same(got + list(it), ref)


def test_clean_shutdown_on_exception(store):
    """An exception in the consumer (as KeyboardInterrupt would) shuts every worker down."""
    plan = P.epoch_plan(store.sizes, 0, 0)
    with pytest.raises(KeyboardInterrupt):
        with DecoderPool(store, workers=2) as pool:
            procs = list(pool._pool._processes.values()) if pool._pool._processes else []
            for step, _ in enumerate(pool.train_batches(plan, 4, 32)):
                procs = list(pool._pool._processes.values())
                if step == 1:
                    raise KeyboardInterrupt
    assert procs and all(not p.is_alive() for p in procs)
    assert pool._pool is None
    assert not [c for c in mp.active_children() if c in procs]


CTRL_C = """
import os, signal, sys
from tstudy.data.decode import DecoderPool
from tstudy.data.packed import PackedStore
from tstudy.data.plan import epoch_plan

if __name__ == "__main__":
    s = PackedStore(sys.argv[1])
    with DecoderPool(s, workers=2, start_method=sys.argv[2]) as pool:
        for step, _ in enumerate(pool.train_batches(epoch_plan(s.sizes, 0, 0), 4, 32)):
            print(" ".join(str(p) for p in pool._pool._processes), flush=True)
            os.killpg(os.getpgid(0), signal.SIGINT)  # Ctrl-C: the whole process group
"""


def test_ctrl_c_leaves_no_processes_or_warnings(store, tmp_path, method="forkserver"):
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run([sys.executable, str(script), str(store.path), method], capture_output=True, text=True,
                       env=env, timeout=60, start_new_session=True)
    assert r.returncode != 0 and "KeyboardInterrupt" in r.stderr
    assert "resource_tracker" not in r.stderr and "leaked" not in r.stderr and "Warning" not in r.stderr
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            break
        time.sleep(0.1)
    assert not alive


def test_spawn_start_method(store):
    plan = P.epoch_plan(store.sizes, 2, 0)
    with DecoderPool(store) as p0, DecoderPool(store, workers=1, start_method="spawn") as p1:
        _assert_same(_train(p1, plan), _train(p0, plan))


def test_no_buffer_files_left(store, pools):
    import tempfile

    dirs = [d for d in ("/dev/shm", tempfile.gettempdir()) if Path(d).is_dir()]
    before = {f for d in dirs for f in Path(d).glob("tstudy-decode-*")}
    it = pools[4].train_batches(P.epoch_plan(store.sizes, 0, 0), 4, 32)
    next(it)
    it.close()
    list(pools[1].test_batches(8, 36, 32))
    assert {f for d in dirs for f in Path(d).glob("tstudy-decode-*")} == before


def test_mismatched_plan_rejected(store):
    with DecoderPool(store) as pool:
        with pytest.raises(ValueError, match="do not fit"):
            pool.train_batches(P.epoch_plan(np.full((40, 2), 500), 0, 0), 4, 32)
        with pytest.raises(ValueError, match="outside"):
            pool.train_batches(P.epoch_plan(np.full((41, 2), 10), 0, 0), 4, 32)
        with pytest.raises(ValueError, match="outside"):
            pool.test_batches(4, 36, 32, indices=[0, 40])


def test_subset_plans_and_indices(store, pools):
    """A plan over a subset of the store (mapped to store indices) and test batches over given indices."""
    subset = np.arange(1, 40, 2)
    p = P.epoch_plan(store.sizes[subset], 4, 1)
    mapped = P.EpochPlan(p.seed, p.epoch, subset[p.order], p.boxes, p.flips)
    idx = np.array([39, 0, 17, 3, 3])
    with DecoderPool(store) as p0:
        ref = _train(p0, mapped, bs=6)
        ref_test = list(p0.test_batches(2, 36, 32, indices=idx))
    assert len(ref) == 3
    for k, (x, y) in enumerate(ref):
        o, b, f = mapped.batch(k, 6)
        np.testing.assert_array_equal(y.numpy(), store.labels[o])
        np.testing.assert_array_equal(x[5].permute(1, 2, 0).numpy(), decode_train(store.jpeg(o[5]), b[5], f[5], 32))
    assert [len(y) for _, y in ref_test] == [2, 2, 1]
    np.testing.assert_array_equal(ref_test[1][0][0].permute(1, 2, 0).numpy(), decode_test(store.jpeg(17), 36, 32))
    for pool in pools.values():
        _assert_same(_train(pool, mapped, bs=6), ref)
        _assert_same(list(pool.test_batches(2, 36, 32, indices=idx)), ref_test)


@needs_tiny
def test_real_tiny_imagenet(tmp_path, pools):
    """200 real JPEGs of Tiny-ImageNet's train zip 0 (2 classes): store bytes as is, deterministic
    plans executed identically by 0 and 4 workers, a resumed epoch equal to the uninterrupted one,
    fixed shapes, train and test batches bit-equal to torchvision's transforms."""
    sub = tmp_path / "sub.zip"
    with zipfile.ZipFile(TINY_ZIP) as src, zipfile.ZipFile(sub, "w") as dst:
        names = [n for n in src.namelist() if n.endswith(".JPEG")]
        classes = sorted({n.split("/")[2] for n in names})[:2]
        picked = [n for n in names if n.split("/")[2] in classes]
        picked = sorted(picked)[:100] + sorted(picked)[-100:]
        for n in picked:
            dst.writestr(n, src.read(n))
    s = PackedStore(build_store(sub, tmp_path / "store", progress=False))
    assert len(s) == 200 and s.classes == classes and s.labels.tolist() == [0] * 100 + [1] * 100
    assert (s.sizes == 64).all()
    plan = P.epoch_plan(s.sizes, 0, 0)
    assert plan == P.epoch_plan(s.sizes, 0, 0)
    with DecoderPool(s) as p0, DecoderPool(s, workers=4) as p4:
        a = _train(p0, plan, bs=32, size=64)
        _assert_same(a, _train(p4, plan, bs=32, size=64))
        _assert_same(a[4:], _train(p4, plan, bs=32, size=64, start=4))  # resumed at step 4 of 6
        test = list(p0.test_batches(64, 72, 64))
        _assert_same(test, list(p4.test_batches(64, 72, 64)))
    assert len(a) == 6 and all(x.shape == (32, 3, 64, 64) for x, _ in a)
    tf = T.Compose([T.Resize(72), T.CenterCrop(64)])
    got = torch.cat([x for x, _ in test])
    assert got.shape == (200, 3, 64, 64) and torch.cat([y for _, y in test]).tolist() == s.labels.tolist()
    for i in range(0, 200, 23):
        np.testing.assert_array_equal(got[i].permute(1, 2, 0).numpy(), np.asarray(tf(_pil(s, i))))
    for pos in range(0, 192, 17):
        i, box, flip = plan.order[pos], plan.boxes[pos], plan.flips[pos]
        img = TF.resized_crop(_pil(s, i), *(int(v) for v in box), [64, 64], antialias=True)
        if flip:
            img = TF.hflip(img)
        np.testing.assert_array_equal(a[pos // 32][0][pos % 32].permute(1, 2, 0).numpy(), np.asarray(img))


def test_stream_bench_runs(tmp_path):
    """python -m tstudy.bench --data stream, tiny: both image sets, workers 0 and 1, a JSON with ratios."""
    import json

    from tstudy.bench import main

    make_folder(tmp_path / "src", n=24)
    out = tmp_path / "b.json"
    res = main(["--data", "stream", "--images", "12", "--source", str(tmp_path / "src"), "--workers", "0,1",
                "--repeats", "1", "--batch-size", "4", "--keep", str(tmp_path / "keep"), "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["set"], r["workers"]) for r in rows] == [("tiny64", 0), ("tiny64", 1), ("synth224", 0), ("synth224", 1)]
    assert rows[0]["images_per_epoch"] == 24 and rows[2]["images_per_epoch"] == 12
    assert all(r["ratio"] > 0 for r in rows) and res["environment"]["cpu_count"]


def test_workers_ignore_the_preemption_signal(store):
    """SLURM may signal every process of a job: decoder workers leave pre-emption to the training
    process (which checkpoints at its next step) and keep decoding."""
    import os

    from tstudy.executors.workers import preempt_signal

    plan = P.epoch_plan(store.sizes, 2, 0)
    with DecoderPool(store, workers=0) as p0:
        ref = _train(p0, plan)
    with DecoderPool(store, workers=1) as pool:
        _train(pool, plan)  # workers started
        pids = list(pool._pool._processes)
        assert pids
        for pid in pids:
            os.kill(pid, preempt_signal())
        _assert_same(_train(pool, plan), ref)
        assert all(p.is_alive() for p in pool._pool._processes.values())


def test_stale_slot_files_of_dead_processes_removed(store, tmp_path, monkeypatch):
    """A slot file left by a killed process (no finally ran) is removed when the next pool starts;
    a live process's file, another host's and an old-style name are left alone."""
    import os
    import subprocess
    import sys

    from tstudy.data import decode as D

    monkeypatch.setattr(D, "_buffer_dirs", lambda: (str(tmp_path),))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, me = D._host_tag(), os.getpid()
    stale = tmp_path / f"tstudy-decode-{host}-{dead.pid}-{D._start_time(dead.pid)}-abc.u8"
    reused = tmp_path / f"tstudy-decode-{host}-{me}-1-abc.u8"  # this pid, another start time: a reused pid
    live = tmp_path / f"{D._slot_prefix()}abc.u8"
    other_host = tmp_path / f"tstudy-decode-00000000-{dead.pid}-0-abc.u8"
    old = tmp_path / "tstudy-decode-abc123.u8"
    for f in (stale, reused, live, other_host, old):
        f.write_bytes(b"x")
    with DecoderPool(store, workers=1) as pool:
        assert not stale.exists() and not reused.exists()
        assert live.exists() and other_host.exists() and old.exists()
        # the pool's own slot file is named after this process and removed after use
        it = pool.test_batches(8, 36, 32)
        next(it)
        mine = [f for f in tmp_path.glob(f"{D._slot_prefix()}*.u8") if f != live]
        assert len(mine) == 1
        D.remove_stale_slot_files()
        assert mine[0].exists()
        it.close()
        assert not mine[0].exists()


def test_workers_do_not_import_torch(store):
    with DecoderPool(store, workers=1) as pool:
        assert pool._pool.submit(eval, "'torch' in __import__('sys').modules").result() is False
