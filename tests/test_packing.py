"""Packing: runs differing only in their loss side share batches and the teacher pass, and give
exactly the results they give alone."""
import pandas as pd
import pytest

from tstudy import RunConfig, Study
from tstudy.engine import RunEnv, train_run, train_runs
from tstudy.errors import ConfigError
from tstudy.executors.local import run_local
from tstudy.planning import pack_groups, pack_key
from tstudy.results import collect
from tstudy.store import DONE, RunStore

DROP = ["wall_time_s", "images_per_s", "host", "pack", "git_commit"]


def test_pack_key_ignores_only_the_loss_side(kd_cfg):
    same = [kd_cfg.replace(temperature=1.0), kd_cfg.replace(method="dkd", method_params={"beta": 2.0}),
            kd_cfg.replace(method="ctkd", temperature=5.0)]
    assert {pack_key(c) for c in same} == {pack_key(kd_cfg)}
    for other in (kd_cfg.replace(lr=0.1), kd_cfg.replace(seed=3), kd_cfg.replace(batch_size=32),
                  kd_cfg.replace(teacher=kd_cfg.teacher.replace(seed=1))):
        assert pack_key(other) != pack_key(kd_cfg)


def test_pack_groups(kd_cfg):
    runs = [kd_cfg.replace(temperature=t) for t in (1, 2, 3, 4, 5)] + [kd_cfg.replace(seed=9)]
    groups = pack_groups(runs, 2)
    assert [len(g) for g in groups] == [2, 2, 1, 1]
    assert all(len({pack_key(c) for c in g}) == 1 for g in groups)
    assert [c for g in groups for c in g if c.seed == 0] == runs[:5]
    with pytest.raises(ConfigError, match="--pack"):
        pack_groups(runs, 0)


def test_packed_equals_alone(tmp_path, teacher_cfg, kd_cfg):
    members = [kd_cfg.replace(temperature=1.0), kd_cfg, kd_cfg.replace(method="kd_shuffled"),
               kd_cfg.replace(method="ctkd"), kd_cfg.replace(method="dtkd"), kd_cfg.replace(method="ls")]
    alone, packed = RunStore(tmp_path / "alone", "s"), RunStore(tmp_path / "packed", "s")
    for store in (alone, packed):
        train_run(teacher_cfg, store, RunEnv())
    for c in members:
        assert train_run(c, alone, RunEnv()).status == DONE
    states = train_runs(members, packed, RunEnv())
    assert {s.status for s in states.values()} == {DONE}
    for c in members:
        a = pd.read_parquet(alone.run_dir(c) / "metrics.parquet").drop(columns=DROP)
        b = pd.read_parquet(packed.run_dir(c) / "metrics.parquet").drop(columns=DROP)
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_packed_runs_resume_from_different_epochs(tmp_path, teacher_cfg, kd_cfg):
    a, b = kd_cfg.replace(temperature=2.0), kd_cfg.replace(temperature=8.0)
    store, ref = RunStore(tmp_path / "p", "s"), RunStore(tmp_path / "r", "s")
    for s in (store, ref):
        train_run(teacher_cfg, s, RunEnv())
    train_run(a, store, RunEnv(stop_after_epoch=2))  # a is at epoch 2, b not started
    assert {s.status for s in train_runs([a, b], store, RunEnv()).values()} == {DONE}
    log = (store.run_dir(a) / "log.txt").read_text()  # the log names where a run resumed
    assert log.count("resumed from its checkpoint after epoch 2\n") == 1
    assert "resumed" not in (store.run_dir(b) / "log.txt").read_text()
    for c in (a, b):
        train_run(c, ref, RunEnv())
        x = pd.read_parquet(store.run_dir(c) / "metrics.parquet").drop(columns=DROP)
        y = pd.read_parquet(ref.run_dir(c) / "metrics.parquet").drop(columns=DROP)
        pd.testing.assert_frame_equal(x, y)


def test_mixed_runs_refused(tmp_path, kd_cfg):
    with pytest.raises(ValueError, match="differ beyond"):
        train_runs([kd_cfg, kd_cfg.replace(lr=0.2)], RunStore(tmp_path, "s"), RunEnv())


def test_study_with_pack_gives_the_same_table(tmp_path, teacher_cfg):
    study = Study("p", RunConfig(model="mlp_s", teacher=teacher_cfg, method="kd", epochs=2),
                  axes={"method": ["ce", "kd", "dkd"], "temperature": [1, 4]}, seeds=[0, 1])
    tables = []
    for pack in (1, 8):
        store = RunStore(tmp_path / f"pack{pack}", "p")
        assert set(run_local(study.runs(), store, RunEnv(), progress=False, pack=pack).values()) == {DONE}
        df, _ = collect(study, store)
        tables.append(df.drop(columns=DROP).sort_values(["run_id", "epoch", "split"]).reset_index(drop=True))
        assert (df["pack"] > 1).any() == (pack > 1)
    pd.testing.assert_frame_equal(*tables)


def test_error_after_some_runs_finished_keeps_them_done(tmp_path, teacher_cfg, kd_cfg, monkeypatch):
    """A group whose later sub-group crashes must not touch the runs that already finished."""
    import tstudy.engine as engine

    a, b = kd_cfg.replace(temperature=2.0), kd_cfg.replace(temperature=8.0)
    store = RunStore(tmp_path, "s")
    train_run(teacher_cfg, store, RunEnv())
    train_run(b, store, RunEnv(stop_after_epoch=2))  # b resumes at 2, a starts at 0: two sub-groups
    real = engine._epochs

    def crash_second(group, *args, **kwargs):
        if group[0].start > 0:
            raise RuntimeError("boom")
        return real(group, *args, **kwargs)

    monkeypatch.setattr(engine, "_epochs", crash_second)
    states = train_runs([a, b], store, RunEnv())
    assert states[a.run_id].status == DONE and store.state(a).status == DONE
    assert states[b.run_id].status == "failed" and "boom" in store.state(b).reason
