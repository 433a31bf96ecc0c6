"""The validation split (``RunConfig.val_fraction``): validated in one line, no old run id moves,
stratified, disjoint from what is trained on, deterministic and the same for every seed; shared
by a teacher and its students; evaluated wherever test is; and runs without it write exactly
what they always wrote."""
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from tstudy import RunConfig, Study
from tstudy.data import load_dataset
from tstudy.data.validation import split_indices, with_validation
from tstudy.device_data import DeviceData
from tstudy.engine import RunEnv, build_network, train_run
from tstudy.errors import ConfigError
from tstudy.evaluation import evaluate
from tstudy.planning import pack_key
from tstudy.results import collect
from tstudy.store import DONE, RunStore, repair_status

LEGACY = Path(__file__).with_name("data") / "legacy_root.tar.gz"
TIMING = ["wall_time_s", "images_per_s", "host", "git_commit", "threads"]  # timing and provenance


@pytest.mark.parametrize("bad", [0.7, -0.1, float("nan"), 1])
def test_val_fraction_out_of_range_is_one_line(bad):
    with pytest.raises(ConfigError, match=r"^val_fraction: expected a number in \[0, 0.5\], got ") as e:
        RunConfig(val_fraction=bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="^val_fraction: expected a number, got 'x'"):
        RunConfig(val_fraction="x")


def test_val_fraction_keeps_old_ids_and_makes_new_ones(kd_cfg):
    assert RunConfig(val_fraction=0).run_id == RunConfig(val_fraction=0.0).run_id == RunConfig().run_id
    assert "val_fraction" not in kd_cfg.canonical()
    cfg = kd_cfg.replace(val_fraction=0.1, teacher=kd_cfg.teacher.replace(val_fraction=0.1))
    assert cfg.canonical()["val_fraction"] == 0.1 and cfg.run_id != kd_cfg.run_id
    assert pack_key(cfg) != pack_key(kd_cfg)  # a pack holds one data stream
    assert cfg.pair_id != kd_cfg.pair_id


def test_teacher_holds_out_the_students_split(kd_cfg):
    with pytest.raises(ConfigError, match=r"^teacher.val_fraction: 0.0 differs from the student's 0.2$"):
        kd_cfg.replace(val_fraction=0.2)
    study = Study("v", kd_cfg, axes={"temperature": [1, 4]}).override({"val_fraction": 0.2})
    runs = study.runs()
    assert [r.teacher for r in runs[1:]] == [runs[0]] * 2 and {r.val_fraction for r in runs} == {0.2}


def test_split_is_stratified_disjoint_deterministic_and_nested():
    counts = {0: 10, 1: 21, 2: 3, 3: 2, 4: 1, 7: 50}
    labels = torch.tensor([c for c, n in counts.items() for _ in range(n)])[torch.randperm(87, generator=torch.Generator().manual_seed(1))]
    torch.manual_seed(123)  # the split uses no global random state
    train, val = split_indices(labels, 0.2)
    torch.manual_seed(456)
    again = split_indices(labels, 0.2)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert sorted(train.tolist() + val.tolist()) == list(range(87)) and not set(train.tolist()) & set(val.tolist())
    held = torch.bincount(labels[val], minlength=8).tolist()
    assert {c: held[c] for c in counts} == {0: 2, 1: 4, 2: 1, 3: 1, 4: 0, 7: 10}  # round(0.2 n), >= 1 from 2 images
    small, large = split_indices(labels, 0.1)[1], split_indices(labels, 0.5)[1]
    assert set(small.tolist()) <= set(val.tolist()) <= set(large.tolist())
    assert split_indices(labels, 0.0)[1].numel() == 0


def test_training_set_is_the_rest_and_test_is_unchanged():
    full = load_dataset("digits")
    s = with_validation(full, 0.2)
    train, val = split_indices(full.train_y, 0.2)
    assert torch.equal(s.train_x, full.train_x[train]) and torch.equal(s.val_y, full.train_y[val])
    assert torch.equal(s.test_x, full.test_x) and torch.equal(s.test_y, full.test_y)
    assert with_validation(full, 0.0) is full and full.val_x is None
    data = DeviceData(s, torch.device("cpu"))
    assert list(data.eval_splits()) == ["train", "test", "val"]
    xs, ys = zip(*data.epoch_batches(seed=3, epoch=1, batch_size=100, augment="none"))
    seen = torch.cat(xs)  # an epoch's images: exactly the training set, not one validation image
    mine = data.normalize(data.train_x)
    key = lambda x: sorted(map(bytes, x.reshape(len(x), -1).numpy()))  # noqa: E731
    assert len(seen) == len(train) and key(seen) == key(mine) and sorted(torch.cat(ys).tolist()) == sorted(s.train_y.tolist())


def test_val_rows_wherever_test_is(tmp_path, teacher_cfg, kd_cfg):
    teacher = teacher_cfg.replace(val_fraction=0.2)
    base = kd_cfg.replace(teacher=teacher, val_fraction=0.2, epochs=2, eval_epochs=(1,), milestones=())
    study = Study("v", base, axes={"temperature": [1, 4]})
    store, env = RunStore(tmp_path, "v"), RunEnv()
    for c in [teacher, *study.runs()[1:]]:
        assert train_run(c, store, env).status == DONE
    student = study.runs()[1]
    m = pd.read_parquet(store.run_dir(student) / "metrics.parquet")
    assert list(zip(m["epoch"], m["split"])) == [(e, s) for e in (1, 2) for s in ("train", "test", "val")]
    assert not m.isna().any().any()  # val rows carry every column test rows do
    data = env.data(student)
    other_seed = RunEnv().data(student.with_seed(5))  # a fresh load: the split does not follow the seed
    assert torch.equal(other_seed.val_x, data.val_x) and torch.equal(other_seed.train_y, data.train_y)
    model = build_network(student, data)
    model.load_state_dict(torch.load(store.run_dir(student) / "model.pt"))
    last = m[(m["epoch"] == 2) & (m["split"] == "val")].iloc[0]
    assert last["acc1"] == evaluate(model, data, data.val_x, data.val_y, student.precision)["acc1"]
    status = store.run_dir(student) / "status.json"
    assert json.loads(status.read_text())["val_acc1"] == last["acc1"]
    status.unlink()  # a lost status.json is rebuilt from the final files, val included
    assert repair_status(store.run_dir(student), student) and json.loads(status.read_text())["val_acc1"] == last["acc1"]
    df, _ = collect(study, store)
    assert set(df["split"]) == {"train", "test", "val"} and set(df["val_fraction"]) == {0.2}
    students = df[df["role"] == "student"]
    assert students["pair_id"].nunique() == 1 and df["pair_id"].nunique() == 2  # the teacher is another model


def test_without_val_fraction_a_run_writes_what_it_always_did(tmp_path):
    """The legacy root (written by commit 0bfd0a0) holds a finished teacher; trained again now,
    its metrics rows, columns and status fields are the same (timing and host aside)."""
    with tarfile.open(LEGACY) as tar:
        tar.extractall(tmp_path, filter="data")
    teacher = RunConfig(model="mlp_s", epochs=2)
    old = tmp_path / "legacy" / "root" / "beta" / "runs" / teacher.run_id
    store = RunStore(tmp_path / "new", "s")
    assert train_run(teacher, store, RunEnv()).status == DONE
    a, b = (pd.read_parquet(d / "metrics.parquet").drop(columns=TIMING, errors="ignore") for d in (old, store.run_dir(teacher)))
    pd.testing.assert_frame_equal(a, b)
    assert set(b["split"]) == {"train", "test"}
    status = [json.loads((d / "status.json").read_text()) for d in (old, store.run_dir(teacher))]
    assert status[0].keys() == status[1].keys()
    df, _ = collect(Study("s", teacher), store)
    assert set(df["val_fraction"]) == {0.0} and df["pair_id"].iloc[0] == teacher.pair_id


# ------------------------------------------------------------------ train_per_class (the subset)
from tstudy.data import DataSplits  # noqa: E402
from tstudy.data.validation import training_splits, training_subset  # noqa: E402


@pytest.mark.parametrize("bad", [0, -3, 10**8])
def test_train_per_class_out_of_range_is_one_line(bad):
    with pytest.raises(ConfigError, match=r"^train_per_class: must be None \(every training image\) or in 1\.\.") as e:
        RunConfig(train_per_class=bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="^train_per_class: "):
        RunConfig(train_per_class="many")


def test_train_per_class_keeps_old_ids_is_a_data_field_and_refused_when_streamed(kd_cfg):
    assert RunConfig(train_per_class=None).run_id == RunConfig().run_id
    cfg = kd_cfg.replace(train_per_class=30, teacher=kd_cfg.teacher.replace(train_per_class=30))
    assert cfg.canonical()["train_per_class"] == 30 and cfg.run_id != kd_cfg.run_id
    assert cfg.pair_id != kd_cfg.pair_id and pack_key(cfg) != pack_key(kd_cfg)
    with pytest.raises(ConfigError, match=r"^teacher.train_per_class: None differs from the student's 30$"):
        kd_cfg.replace(train_per_class=30)
    study = Study("s", kd_cfg, axes={"temperature": [1, 4]}).override({"train_per_class": 30})
    assert {r.train_per_class for r in study.runs()} == {30}  # the teacher too
    with pytest.raises(ConfigError, match="^train_per_class: the streamed data path"):
        RunConfig(dataset="imagenet", model="tv_resnet18", train_per_class=10)


def _splits(labels: list[int]) -> DataSplits:
    y = torch.tensor(labels)
    x = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return DataSplits("toy", x, y, x[:2], y[:2], 3, (0.5,), (0.25,))


def test_subset_keeps_the_first_images_of_each_class_in_order_then_the_split_is_carved_from_it():
    labels = [2, 0, 0, 1, 0, 2, 0, 1, 2, 2, 0]
    s = training_subset(_splits(labels), 2)
    assert s.train_x[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 5, 7]  # dataset order; class 0's 4th, 6th, 10th gone
    assert s.train_y.tolist() == [2, 0, 0, 1, 2, 1]
    assert training_subset(_splits(labels), None) is not None
    whole = training_subset(_splits(labels), 100)  # a class with fewer keeps all of them
    assert whole.train_y.tolist() == labels
    both = training_splits(_splits(labels), 3, 0.34)
    kept = set(training_subset(_splits(labels), 3).train_x[:, 0, 0, 0].tolist())
    seen = both.train_x[:, 0, 0, 0].tolist() + both.val_x[:, 0, 0, 0].tolist()
    assert sorted(seen) == sorted(kept) and both.val_y.numel() == 3  # one of each class's three held out
    assert torch.equal(both.test_x, _splits(labels).test_x)


def test_a_run_trains_on_the_subset(tmp_path, kd_cfg):
    teacher = kd_cfg.teacher.replace(train_per_class=20, val_fraction=0.1, epochs=1, milestones=())
    env = RunEnv()
    assert train_run(teacher, RunStore(tmp_path, "s"), env).status == DONE
    data = env.data(teacher)
    assert torch.bincount(data.train_y).tolist() == [18] * 10 and data.val_y.numel() == 20
    rows = pd.read_parquet(RunStore(tmp_path, "s").run_dir(teacher) / "metrics.parquet")
    assert set(rows["split"]) == {"train", "test", "val"}
