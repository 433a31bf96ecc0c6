"""The streamed data path in the engine: a tiny class-per-folder set of JPEGs with augment="rrc_flip"
trains end to end on the CPU, packed equals unpacked, and a run stopped within an epoch resumes
to the metrics of the uninterrupted run."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tstudy import RunConfig
from tstudy.engine import RunEnv, train_run, train_runs
from tstudy.machine import Machine
from tstudy.errors import ConfigError
from tstudy.store import DONE, INCOMPLETE, RunStore

DROP = ["wall_time_s", "images_per_s", "host", "pack", "git_commit"]
CLASSES, PER_CLASS = 4, 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/<class>/*.jpg (12 per class) and val/<class>/*.jpg (3 per class), varied sizes."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", PER_CLASS), ("val", 3)):
        for c in range(CLASSES):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
                base = np.zeros((h, w, 3), np.uint8)
                base[..., c % 3] = 160 + 40 * (c // 3)
                img = np.clip(base + rng.integers(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
    return root


def cfgs(**kw):
    base = dict(dataset="imagefolder", image_size=32, augment="rrc_flip", batch_size=8, lr=0.05, **kw)
    teacher = RunConfig(model="cnn_s", epochs=2, **base)
    student = RunConfig(model="cnn_s", teacher=teacher, method="kd", temperature=4.0, epochs=3, seed=1, **base)
    return teacher, student


def metrics(store, cfg):
    return pd.read_parquet(store.run_dir(cfg) / "metrics.parquet").drop(columns=DROP, errors="ignore")


def test_streamed_training_end_to_end_and_packed_equals_alone(tmp_path, folder):
    teacher, kd = cfgs()
    members = [kd.replace(temperature=1.0), kd]
    alone, packed = RunStore(tmp_path / "a", "s"), RunStore(tmp_path / "p", "s")
    env = RunEnv(data_root=str(folder), data_workers=0)
    for store in (alone, packed):
        assert train_run(teacher, store, env).status == DONE
    assert (folder / "tstudy-store" / "train" / "meta.json").is_file()
    for c in members:
        assert train_run(c, alone, env).status == DONE
    assert {s.status for s in train_runs(members, packed, env).values()} == {DONE}
    for c in members:
        a, b = metrics(alone, c), metrics(packed, c)
        assert set(a["split"]) == {"train", "test"}
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    data = env.data(kd)
    assert data.n_batches(8) == CLASSES * PER_CLASS // 8 and len(data.eval_splits()["test"]) == CLASSES * 3


def test_stream_resumes_within_an_epoch(tmp_path, folder):
    teacher, kd = cfgs(val_fraction=0.25)
    ref, cut = RunStore(tmp_path / "r", "s"), RunStore(tmp_path / "c", "s")
    env = RunEnv(data_root=str(folder), data_workers=0, checkpoint_steps=2)
    for store in (ref, cut):
        train_run(teacher, store, env)
    assert train_run(kd, ref, env).status == DONE
    stopped = RunEnv(data_root=str(folder), data_workers=0, checkpoint_steps=2, stop_after_step=(2, 2))
    assert train_run(kd, cut, stopped).status == INCOMPLETE
    ck = torch.load(cut.run_dir(kd) / "checkpoint.pt", weights_only=False)
    assert (ck["epoch"], ck["step"]) == (1, 2)
    assert train_run(kd, cut, env).status == DONE
    a, b = metrics(ref, kd), metrics(cut, kd)
    assert set(a["split"]) == {"train", "test", "val"}
    cols = ["epoch", "split", "acc1", "acc5", "loss", "train_loss"]
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)


def test_device_path_resumes_within_an_epoch(tmp_path, teacher_cfg, kd_cfg):
    ref, cut = RunStore(tmp_path / "r", "s"), RunStore(tmp_path / "c", "s")
    env = RunEnv(checkpoint_steps=3)
    for store in (ref, cut):
        train_run(teacher_cfg, store, env)
    assert train_run(kd_cfg, ref, env).status == DONE
    assert train_run(kd_cfg, cut, RunEnv(checkpoint_steps=3, stop_after_step=(2, 3))).status == INCOMPLETE
    assert train_run(kd_cfg, cut, env).status == DONE
    cols = ["epoch", "split", "acc1", "acc5", "loss", "train_loss"]
    pd.testing.assert_frame_equal(metrics(ref, kd_cfg)[cols], metrics(cut, kd_cfg)[cols], check_exact=True)
    assert "resumed from its checkpoint after epoch 1 and step 3 of epoch 2\n" in (cut.run_dir(kd_cfg) / "log.txt").read_text()


def test_rrc_flip_only_where_images_are_files():
    with pytest.raises(ConfigError, match="augment: 'rrc_flip'"):
        RunConfig(dataset="digits", model="mlp_s", augment="rrc_flip")
    with pytest.raises(ConfigError, match="augment: imagenet"):
        RunConfig(dataset="imagenet", model="tv_resnet18", augment="crop_flip")


def test_missing_imagenet_names_every_path(tmp_path):
    from tstudy.data.imagenet import locate_imagenet

    with pytest.raises(ConfigError, match=f"imagenet: data not found; tried .*{tmp_path}"):
        locate_imagenet(tmp_path)


def test_packed_network_resumes_within_an_epoch(tmp_path, teacher_cfg, kd_cfg):
    members = [kd_cfg.replace(temperature=1.0), kd_cfg]
    ref, cut = RunStore(tmp_path / "r", "s"), RunStore(tmp_path / "c", "s")
    env = RunEnv(checkpoint_steps=3, pack_mode="network")
    for store in (ref, cut):
        train_run(teacher_cfg, store, env)
    # The reference never checkpoints within an epoch: step checkpoints must not change any metric.
    assert {s.status for s in train_runs(members, ref, RunEnv(pack_mode="network")).values()} == {DONE}
    stopped = RunEnv(checkpoint_steps=3, pack_mode="network", stop_after_step=(3, 3))
    assert {s.status for s in train_runs(members, cut, stopped).values()} == {INCOMPLETE}
    assert {s.status for s in train_runs(members, cut, env).values()} == {DONE}
    for c in members:
        pd.testing.assert_frame_equal(metrics(ref, c), metrics(cut, c), check_exact=True)


def test_sequential_pack_resumes_within_an_epoch(tmp_path, teacher_cfg, kd_cfg):
    members = [kd_cfg.replace(temperature=1.0), kd_cfg]
    ref, cut = RunStore(tmp_path / "r", "s"), RunStore(tmp_path / "c", "s")
    for store in (ref, cut):
        train_run(teacher_cfg, store, RunEnv())
    assert {s.status for s in train_runs(members, ref, RunEnv(pack_mode="sequential")).values()} == {DONE}
    stopped = RunEnv(checkpoint_steps=2, pack_mode="sequential", stop_after_step=(2, 4))
    assert {s.status for s in train_runs(members, cut, stopped).values()} == {INCOMPLETE}
    assert {s.status for s in train_runs(members, cut, RunEnv(checkpoint_steps=2, pack_mode="sequential")).values()} \
        == {DONE}
    for c in members:
        pd.testing.assert_frame_equal(metrics(ref, c), metrics(cut, c), check_exact=True)


def preempted_run(tmp_path, teacher_cfg, kd_cfg, monkeypatch, at, env):
    """Train ``kd_cfg`` whole (ref) and with SLURM's pre-emption signal sent during the step
    ``at(data) -> (epoch, i)`` (cut); returns (ref, cut, the cut run's state). The engine's own
    step afterwards, as a requeued job has."""
    import os
    import signal

    from tstudy import engine
    from tstudy.executors.workers import _checkpoint_now
    from tstudy.preemption import preempt_signal

    ref, cut = RunStore(tmp_path / "r", "s"), RunStore(tmp_path / "c", "s")
    for store in (ref, cut):
        train_run(teacher_cfg, store, RunEnv())
    assert train_run(kd_cfg, ref, RunEnv()).status == DONE
    real = engine.group_step

    def signalled(group, pack, teacher, data, epoch, graphs):
        step = real(group, pack, teacher, data, epoch, graphs)

        def call(x, y, i):
            out = step(x, y, i)
            if (epoch, i) == at(data):
                os.kill(os.getpid(), preempt_signal())  # as SLURM does before pre-emption
            return out
        return call

    monkeypatch.setattr(engine, "group_step", signalled)
    old = signal.signal(preempt_signal(), _checkpoint_now)
    try:
        state = train_run(kd_cfg, cut, env)
    finally:
        signal.signal(preempt_signal(), old)
        engine._CHECKPOINT_NOW.clear()
        monkeypatch.setattr(engine, "group_step", real)
    return ref, cut, state


def test_preemption_signal_checkpoints_at_the_next_step(tmp_path, teacher_cfg, kd_cfg, monkeypatch):
    ref, cut, state = preempted_run(tmp_path, teacher_cfg, kd_cfg, monkeypatch, lambda data: (2, 4), RunEnv())
    assert state.status == INCOMPLETE and "pre-empted" in state.reason
    ck = torch.load(cut.run_dir(kd_cfg) / "checkpoint.pt", weights_only=False)
    assert (ck["epoch"], ck["step"]) == (1, 5)
    assert train_run(kd_cfg, cut, RunEnv()).status == DONE
    cols = ["epoch", "split", "acc1", "acc5", "loss", "train_loss"]
    pd.testing.assert_frame_equal(metrics(ref, kd_cfg)[cols], metrics(cut, kd_cfg)[cols], check_exact=True)


def test_batches_do_not_depend_on_decoder_workers(folder):
    from tstudy.data.imagenet import stores
    from tstudy.stream_data import StreamData

    train, test = stores("imagefolder", folder)
    out = []
    for workers in (0, 2):
        data = StreamData(train, test, "imagefolder", 32, 0.25, torch.device("cpu"), workers)
        try:
            batches = [x for x, _ in data.epoch_batches(3, 2, 8, "rrc_flip", start_step=1)]
            evals = {k: [x for x, _ in v] for k, v in data.eval_splits().items()}
        finally:
            data.close()
        out.append((batches, evals))
    (b0, e0), (b2, e2) = out
    assert len(b0) == 3 and all(torch.equal(a, b) for a, b in zip(b0, b2))
    assert e0.keys() == e2.keys() == {"train", "test", "val"}
    assert all(torch.equal(a, b) for k in e0 for a, b in zip(e0[k], e2[k]))


def test_imagenet_layout_flat_val_trains(tmp_path):
    root = tmp_path / "imagenet"
    rng = np.random.default_rng(1)
    wnids = ["n01", "n02", "n03"]
    lines = ["ImageId,PredictionString"]
    for c, w in enumerate(wnids):
        (root / "train" / w).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "train" / w / f"{w}_{i}.JPEG")
    (root / "val").mkdir()
    for i in range(6):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        Image.fromarray(rng.integers(0, 255, (44, 40, 3), dtype=np.uint8)).save(root / "val" / f"{name}.JPEG")
        lines.append(f"{name},{wnids[i % 3]} 1 2 3 4")
    (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    cfg = RunConfig(dataset="imagenet", model="cnn_s", image_size=32, batch_size=8, epochs=1, lr=0.05)
    env = RunEnv(data_root=str(tmp_path), data_workers=0)
    assert train_run(cfg, RunStore(tmp_path / "res", "s"), env).status == DONE
    assert (root / "tstudy-store" / "val" / "meta.json").is_file()
    data = env.data(cfg)
    assert data.num_classes == 3 and len(data.eval_splits()["test"]) == 6
    assert [int(v) for _, y in data.eval_splits()["test"] for v in y] == [0, 1, 2, 0, 1, 2]


STUDY = """
from tstudy import RunConfig, Study

DATA = dict(dataset="imagefolder", image_size=32, augment="rrc_flip", batch_size=8, lr=0.05)
TEACHER = RunConfig(model="cnn_s", epochs=1, **DATA)
study = Study(name="{name}", base=RunConfig(model="cnn_s", teacher=TEACHER, method="kd", temperature=4,
                                            epochs=2, **DATA),
              axes={{"temperature": [1, 4]}}, seeds=[0])
"""


def test_cli_launch_streamed_packed_equals_unpacked(tmp_path, folder, capsys):
    from tstudy.cli import main
    from tstudy.results import collect
    from tstudy.study import load_study

    tables = []
    for name, pack in (("alone", "1"), ("packed", "2")):
        f = tmp_path / f"{name}.py"
        f.write_text(STUDY.format(name=name))
        args = ["launch", str(f), "--root", str(tmp_path / name), "--device", "cpu", "--data-root", str(folder),
                "--data-workers", "0", "--pack", pack]
        assert main(args + ["--dry-run"]) == 0
        assert main(args) == 0
        study = load_study(f)
        t = collect(study, RunStore(tmp_path / name, study.name))[0]
        assert t.loc[t["method"] == "kd", "pack"].eq(int(pack)).all()
        tables.append(t.drop(columns=[c for c in t.columns if c in DROP or c == "study"]).sort_values(
            ["run_id", "epoch", "split"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    assert main(["launch", str(tmp_path / "alone.py"), "--root", str(tmp_path / "x"), "--data-workers", "-1"]) == 2
    assert "--data-workers: must be >= 0" in capsys.readouterr().err


def test_slurm_job_checkpoints_then_hands_over_to_submitit(tmp_path, teacher_cfg, monkeypatch):
    import os
    import signal

    from tstudy import engine
    from tstudy.executors import slurm, workers
    from tstudy.executors.slurm import TrainJob

    calls, trained = [], []

    def fake_run_packs(packs, store, spec, *a, **k):
        os.kill(os.getpid(), workers.preempt_signal())  # SLURM's warning, while training
        # submitit's handler ran at once (the job is requeued before SLURM's kill), its exit deferred
        assert engine.checkpoint_requested() and calls == [workers.preempt_signal()]
        os.kill(os.getpid(), workers.preempt_signal())  # a second signal: requeued once only
        trained.append(True)  # the training goes on to its checkpoint
        return {r.run_id: workers.Outcome("incomplete", "pre-empted") for p in packs for r in p.runs}

    def submitit_handler(signum, frame):
        calls.append(signum)
        raise SystemExit(-1)

    monkeypatch.setattr(workers, "run_packs", fake_run_packs)
    monkeypatch.setattr(slurm, "clear_dead_job_lock", lambda d: None)
    old = signal.signal(workers.preempt_signal(), submitit_handler)
    try:
        with pytest.raises(SystemExit):
            TrainJob([[teacher_cfg]], str(tmp_path), "s", Machine(checkpoint_steps=5))()
    finally:
        signal.signal(workers.preempt_signal(), old)
        engine._CHECKPOINT_NOW.clear()
    assert calls == [workers.preempt_signal()] and trained == [True]


def test_cli_launch_streamed_with_two_workers_equals_one(tmp_path, folder):
    """Training workers are not daemons: a streamed run in a worker process starts its decoder pool."""
    from tstudy.cli import main
    from tstudy.results import collect
    from tstudy.study import load_study

    tables = []
    for name, workers in (("one", "1"), ("two", "2")):
        f = tmp_path / f"{name}.py"
        f.write_text(STUDY.format(name="s"))
        args = ["launch", str(f), "--root", str(tmp_path / name), "--device", "cpu", "--data-root", str(folder),
                "--data-workers", "1", "--workers", workers, "--pack", "1"]
        assert main(args) == 0
        study = load_study(f)
        store = RunStore(tmp_path / name, study.name)
        assert {store.state(c).status for c in study.runs()} == {DONE}
        t = collect(study, store)[0]
        tables.append(t.drop(columns=[c for c in t.columns if c in DROP or c == "study"]).sort_values(
            ["run_id", "epoch", "split"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)


def test_decoder_processes_import_only_the_preemption_leaf(tmp_path, folder):
    """A decoder process's start-up imports tstudy.preemption (stdlib only), not the workers/engine modules."""
    import subprocess
    import sys

    teacher, _ = cfgs()
    RunEnv(data_root=str(folder), data_workers=0).data(teacher)  # tstudy-store/ exists
    code = ("import sys; from tstudy.data import decode; decode._init_worker(sys.argv[1]); "
            "import tstudy.preemption as p; bad = [m for m in ('tstudy.executors.workers', 'tstudy.engine') "
            "if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code, str(folder / "tstudy-store" / "train")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    src = (Path(__file__).parents[1] / "tstudy" / "preemption.py").read_text()
    assert [ln for ln in src.splitlines() if ln.startswith(("import", "from"))] == [
        "from __future__ import annotations", "import os", "import signal", "import threading"]


@pytest.mark.parametrize("batch_size", [4096, 128])
def test_preemption_at_an_epoch_end_or_in_a_single_step_epoch(tmp_path, teacher_cfg, kd_cfg, monkeypatch, batch_size):
    """A signal during an epoch's last step (every step, with one step per epoch) stops the run right
    after the epoch-end checkpoint; resumed, its metrics equal the uninterrupted run's."""
    kd_cfg = kd_cfg.replace(batch_size=batch_size)
    ref, cut, state = preempted_run(tmp_path, teacher_cfg, kd_cfg, monkeypatch,
                                    lambda data: (2, data.n_batches(kd_cfg.batch_size) - 1), RunEnv(checkpoint_steps=1))
    assert state.status == INCOMPLETE and "pre-empted" in state.reason and state.epoch == 2
    ck = torch.load(cut.run_dir(kd_cfg) / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 2 and "step" not in ck
    assert train_run(kd_cfg, cut, RunEnv()).status == DONE
    pd.testing.assert_frame_equal(metrics(ref, kd_cfg), metrics(cut, kd_cfg), check_exact=True)


@pytest.mark.parametrize("flag, kw", [("--data-workers", "data_workers"), ("--checkpoint-steps", "checkpoint_steps")])
def test_machine_flags_have_one_check(tmp_path, capsys, flag, kw):
    """--data-workers / --checkpoint-steps < 0: the launch flag and RunEnv give the same one line (exit 2)."""
    from tstudy.cli import main

    f = tmp_path / "s.py"
    f.write_text(STUDY.format(name="s"))
    with pytest.raises(ConfigError) as e:
        RunEnv(**{kw: -1})
    assert main(["launch", str(f), "--root", str(tmp_path / "r"), flag, "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(str(e.value)) and str(e.value).startswith(f"{flag}: must be >= 0")
    assert not (tmp_path / "r").exists()


def test_preemption_signal_while_a_worker_imports_the_engine(monkeypatch):
    """A worker's handler sets the request without importing the engine (a signal may come while
    the worker is still importing torch and the engine)."""
    import sys

    from tstudy import preemption
    from tstudy.executors import workers

    monkeypatch.delitem(sys.modules, "tstudy.engine")
    monkeypatch.setitem(sys.modules, "tstudy.engine", None)  # an import of it now fails
    try:
        workers._checkpoint_now(preemption.preempt_signal(), None)
        assert preemption.checkpoint_requested() and workers._preempted()
    finally:
        preemption.REQUESTED.clear()
