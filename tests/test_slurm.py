"""The SLURM executor: options, array splitting, dependencies, packing, squeue parsing and status
without a cluster; then, on the one-node cluster of .ci/slurm_up.sh (TSTUDY_SLURM=1), a study
launched with `tstudy launch --executor slurm` equals the local run, and a requeued job resumes
from its checkpoint. Under CI the cluster tests fail, never skip, when the cluster is not up."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
from submitit.slurm.slurm import _make_sbatch_string

from tstudy import RunConfig, Study
from tstudy.cli import _parser, main
from tstudy.engine import RunEnv, train_run
from tstudy.errors import ConfigError
from tstudy.executors import slurm
from tstudy.executors.local import run_local
from tstudy.machine import Machine
from tstudy.executors.options import SlurmOptions, options_for, parse_time
from tstudy.executors.slurm import (TrainJob, chunks, parse_max_array_size, parse_squeue, plan_arrays, run_note,
                                    sbatch_parameters, slurm_plan)
from tstudy.planning import make_plan, pack_groups, pack_key, states_with_teachers
from tstudy.results import collect
from tstudy.store import DONE, NOT_LAUNCHED, RUNNING, RunState, RunStore, read_status, write_status
from tstudy.study import load_study

# Timings, and the checkout's commit (it may change while a test runs); all else must be equal, bit for bit.
VOLATILE = ["wall_time_s", "images_per_s", "git_commit"]


@pytest.fixture(autouse=True)
def _keep_torch_threads(monkeypatch):
    """TrainJob sets torch's thread count (SLURM_CPUS_PER_TASK); keep it from leaking into other
    tests: CPU results are bit-exact only at equal thread counts."""
    import torch

    n = torch.get_num_threads()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(n))
    yield
    torch.set_num_threads(n)


# =========================================================================== options
def test_options_from_mapping_normalises_values():
    o = SlurmOptions.from_mapping({"partition": "gpu", "time": "04:30:00", "gpus_per_job": "1", "mem": "16gb",
                                   "sbatch": {"--exclude": "node3", "requeue": True}, "setup": "module load cuda",
                                   "pack": 8})
    assert (o.time, o.gpus_per_job, o.mem, o.pack) == (270, 1, "16G", 8)
    assert o.sbatch == {"exclude": "node3", "requeue": True} and o.setup == ("module load cuda",)
    assert SlurmOptions.from_mapping(None) == SlurmOptions()


@pytest.mark.parametrize("text, minutes", [(90, 90), ("90", 90), ("1:30", 2), ("02:00:00", 120), ("0:0:30", 1),
                                           ("1-0", 1440), ("1-02:30", 1590), ("2-00:00:01", 2881)])
def test_parse_time(text, minutes):
    assert parse_time(text) == minutes


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        SlurmOptions.from_mapping({"partiton": "gpu"})
    msg = str(e.value)
    assert "'partiton'" in msg and "partition" in msg and "array_parallelism" in msg and "\n" not in msg


@pytest.mark.parametrize("d, field", [({"time": "soon"}, "slurm.time"), ({"time": 0}, "slurm.time"),
                                      ({"mem": 16}, "slurm.mem"), ({"mem": "lots"}, "slurm.mem"),
                                      ({"pack": 0}, "slurm.pack"), ({"gpus_per_job": -1}, "slurm.gpus_per_job"),
                                      ({"cpus_per_job": "two"}, "slurm.cpus_per_job"),
                                      ({"array_parallelism": True}, "slurm.array_parallelism"),
                                      ({"sbatch": {"array": "0-3"}}, "slurm.sbatch"),
                                      ({"sbatch": {"bad name": 1}}, "slurm.sbatch"),
                                      ({"sbatch": ["x"]}, "slurm.sbatch"), ({"sbatch": ["exclude=n1"]}, "slurm.sbatch"),
                                      ({"setup": [1]}, "slurm.setup"), ({"partition": ""}, "slurm.partition")])
def test_bad_values_name_the_field(d, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        SlurmOptions.from_mapping(d)


def test_cli_flags_override_the_study_options():
    args = _parser().parse_args(["launch", "s.py", "--executor", "slurm", "--time", "2:00:00", "--gpus", "2",
                                 "--sbatch", "exclude=n1", "--sbatch", "requeue=", "--setup", "module load x",
                                 "--pack", "4", "--array-parallelism", "16"])
    study = {"slurm": {"partition": "gpu", "time": 30, "sbatch": {"exclude": "n0", "comment": "kd"}, "setup": ["a"]}}
    o = options_for(study, args, "slurm")
    assert (o.partition, o.time, o.gpus_per_job, o.pack, o.array_parallelism) == ("gpu", 120, 2, 4, 16)
    assert o.sbatch == {"exclude": "n1", "comment": "kd", "requeue": True} and o.setup == ("module load x",)


@pytest.mark.parametrize("item", ["foo", "=node3", ""])
def test_sbatch_flag_without_key_value_is_one_line(tmp_path, capsys, item):
    f = tmp_path / "s.py"
    f.write_text(STUDY.format(epochs=1, t_epochs=1, options="{}"))
    root = tmp_path / "r"
    assert main(["launch", str(f), "--root", str(root), "--executor", "slurm", "--sbatch", item, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tstudy: error: --sbatch: expected KEY=VALUE (KEY= for a flag") and "\n" not in err, err
    assert not root.exists()


@pytest.mark.parametrize("value", ['["x"]', '["exclude=n1"]', '"exclude=n1"'])
def test_sbatch_in_a_study_file_must_be_a_dict(tmp_path, capsys, value):
    f = tmp_path / "s.py"
    f.write_text(STUDY.format(epochs=1, t_epochs=1, options='{"slurm": {"sbatch": %s}}' % value))
    root = tmp_path / "r"
    assert main(["launch", str(f), "--root", str(root), "--executor", "slurm", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "slurm.sbatch: expected a dict of sbatch options" in err and "\n" not in err, err
    assert not root.exists()


def test_slurm_flags_are_refused_by_the_local_executor(tmp_path, capsys):
    f = tmp_path / "s.py"
    f.write_text(STUDY.format(epochs=1, t_epochs=1, options="{}"))
    assert main(["launch", str(f), "--root", str(tmp_path / "r"), "--partition", "gpu"]) == 2
    assert "--partition: only with --executor slurm" in capsys.readouterr().err


# =========================================================================== sbatch script, arrays
def test_sbatch_script_has_the_options_and_the_dependency(tmp_path):
    o = SlurmOptions(partition="gpu", account="lab", qos="high", time=240, gpus_per_job=1, cpus_per_job=8,
                     mem="32G", constraint="a100", sbatch={"exclude": "node3"}, setup=("module load cuda",),
                     array_parallelism=4)
    p = sbatch_parameters(o, "fig1", dependency="afterok:12_0")
    text = _make_sbatch_string(command="python -m x", folder=tmp_path, map_count=10, **p)
    for line in ["--partition=gpu", "--account=lab", "--qos=high", "--time=240", "--gpus-per-node=1",
                 "--cpus-per-task=8", "--mem=32G", "--constraint=a100", "--exclude=node3",
                 "--dependency=afterok:12_0", "--kill-on-invalid-dep=yes", "--array=0-9%4", "--job-name=tstudy-fig1"]:
        assert f"#SBATCH {line}\n" in text
    assert "\nmodule load cuda\n" in text
    plain = sbatch_parameters(SlurmOptions(), "s")
    assert "dependency" not in plain and "additional_parameters" not in plain and plain["time"] == 60


@pytest.mark.parametrize("text, expected", [("MaxArraySize            = 40001\nMaxJobCount = 10000\n", 40001),
                                            ("ClusterName = x\n", 1001), ("", 1001)])
def test_parse_max_array_size(text, expected):
    assert parse_max_array_size(text) == expected


def test_chunks_respect_max_array_size():
    assert [len(c) for c in chunks(list(range(2500)), 1001)] == [1001, 1001, 498]
    assert chunks([], 1001) == [] and [len(c) for c in chunks([1, 2, 3], 0)] == [1, 1, 1]


def _students(teacher: RunConfig, n: int) -> list[RunConfig]:
    base = RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=2)
    return [base.replace(temperature=float(t), seed=s) for s in range(n // 10) for t in range(1, 11)]


def _plan(runs, pack=1, done=(), active=None):
    """The planning core's plan for runs never launched, but for ``done`` teachers."""
    states = states_with_teachers(runs, lambda c: RunState(DONE if c in done else NOT_LAUNCHED))
    return make_plan(runs, states, pack, active=active, waitable=active or {})


def test_plan_puts_teachers_first_and_splits_each_group():
    t1, t2 = RunConfig(model="mlp_l", epochs=2), RunConfig(model="mlp_l", epochs=2, seed=1)
    s1, s2 = _students(t1, 2500), _students(t2, 20)
    todo = [t1, t2] + s1 + s2
    arrays = plan_arrays(_plan(todo), packs_per_job=1, max_array=1001)
    assert [(len(a.jobs), a.after) for a in arrays] == [(2, None), (1001, t1.run_id), (1001, t1.run_id),
                                                        (498, t1.run_id), (20, t2.run_id)]
    assert [r.run_id for a in arrays for j in a.jobs for p in j for r in p.runs] == [r.run_id for r in todo]


def test_students_of_a_done_teacher_wait_for_nothing_and_live_teachers_are_waited_for():
    t1, t2 = RunConfig(model="mlp_l", epochs=2), RunConfig(model="mlp_l", epochs=2, seed=1)
    runs = _students(t1, 10) + _students(t2, 10)  # t1 done, t2 queued from an earlier launch
    arrays = plan_arrays(_plan(runs, done=[t1], active={t2.run_id: "77_1"}))
    assert [(len(a.jobs), a.after) for a in arrays] == [(10, None), (10, t2.run_id)]
    # a teacher running outside SLURM cannot be waited for: its students are not submitted
    states = states_with_teachers(runs, lambda c: RunState(RUNNING if c == t2 else DONE if c == t1 else NOT_LAUNCHED))
    plan = make_plan(runs, states, waitable={})
    assert len(plan.todo) == 10 and len(plan.blocked) == 10 and "is running" in plan.blocked[0][1]


def test_packs_group_only_loss_side_variants():
    t = RunConfig(model="mlp_l", epochs=2)
    runs = _students(t, 20) + [RunConfig(model="mlp_s", teacher=t, method="dkd", epochs=2)]
    packs = pack_groups(runs, 8)
    assert [len(p) for p in packs] == [8, 3, 8, 2]  # the dkd run joins seed 0's second pack
    for p in packs:
        assert len({pack_key(r) for r in p}) == 1
    assert len(pack_groups(runs, 1)) == len(runs)
    arrays = plan_arrays(_plan([t] + runs, pack=8), max_array=3)
    assert [(len(a.jobs), a.after) for a in arrays] == [(1, None), (3, t.run_id), (1, t.run_id)]


def test_a_job_holds_packs_per_job_packs():
    t = RunConfig(model="mlp_l", epochs=2)
    runs = [t] + _students(t, 30)
    arrays = plan_arrays(_plan(runs, pack=4), packs_per_job=2, max_array=1001)
    assert [(len(a.jobs), a.after, a.n_runs) for a in arrays] == [(1, None, 1), (5, t.run_id, 30)]
    assert [len(j) for j in arrays[1].jobs] == [2, 2, 2, 2, 1]  # 9 packs (4, 4, 2 per seed), 2 per job
    assert SlurmOptions(gpus_per_job=4).job_packs == 4 and SlurmOptions(packs_per_job=2).job_packs == 2
    assert SlurmOptions().job_packs == 1


# =========================================================================== queue, records, status
SQUEUE = """12_0|12|COMPLETED|None
12_1|13|RUNNING|None
14_2|14|PENDING|Dependency
14_3|14|PENDING|DependencyNeverSatisfied
15|15|FAILED|NonZeroExitCode
"""


def test_parse_squeue():
    q = parse_squeue(SQUEUE + "garbage\n")
    assert q.get("12_1").state == "RUNNING" and q.by_raw["13"].job_id == "12_1"
    assert q.get("14_2").alive and not q.get("14_3").alive and not q.get("15").alive
    assert "14" not in q.by_raw and q.get(None) is None


class _Job:
    def __init__(self, job_id: str, folder: Path) -> None:
        self.job_id = job_id
        self.paths = type("P", (), {"stdout": folder / f"{job_id}_0_log.out", "stderr": folder / f"{job_id}_0_log.err"})


def test_launch_plan_and_status_notes(tmp_path, teacher_cfg, kd_cfg):
    store = RunStore(tmp_path, "s")
    a, b, c = kd_cfg, kd_cfg.replace(temperature=1.0), kd_cfg.replace(temperature=2.0)
    for cfg, job in ((teacher_cfg, "12_0"), (a, "14_2"), (b, "14_3"), (c, "15")):
        slurm.write_record(store.run_dir(cfg), _Job(job, tmp_path), [cfg], None)
    (tmp_path / "15_0_log.err").write_text("Traceback ...\nValueError: boom\nsrun: error: vm: task 0: Exited\n")
    q = parse_squeue(SQUEUE)
    plan, live = slurm_plan([teacher_cfg, a, b, c], store, q)
    assert [r.run_id for r in plan.todo] == [teacher_cfg.run_id, b.run_id, c.run_id] and live == {a.run_id: "14_2"}
    assert run_note(store, a, store.state(a), q) == ("queued", "job 14_2 queued (Dependency)")
    write_status(store.run_dir(teacher_cfg), DONE)  # pretend the teacher is done (its files are not there)
    kind, text = run_note(store, c, store.state(c), q)
    assert kind == "ended" and "job 15 ended FAILED" in text
    assert run_note(store, c, store.state(c), None) == ("unknown", "job 15 (squeue unavailable)")
    assert slurm.read_record(store.run_dir(a))["array_task"] == 2
    slurm.write_record(store.run_dir(a), _Job("20_0", tmp_path), [a], "afterok:19_0")
    rec = slurm.read_record(store.run_dir(a))
    assert rec["previous_jobs"] == ["14_2"] and rec["dependency"] == "afterok:19_0"


def test_log_tail_prefers_the_exception_or_slurm_line(tmp_path):
    p = tmp_path / "x.err"
    p.write_text("submitit INFO ...\nRuntimeError: 1 of 1 runs did not finish\nsrun: error: task 0: Exited\n")
    assert slurm.log_tail([str(p), None]) == "RuntimeError: 1 of 1 runs did not finish"
    p.write_text("epoch 1\nslurmstepd: error: *** JOB 9 ON vm CANCELLED AT 2026-01-01T00:00:00 ***\n")
    assert "CANCELLED" in slurm.log_tail([str(p)])
    assert slurm.log_tail([str(tmp_path / "missing")]) == ""


# =========================================================================== the job callable
def test_train_job_trains_resumes_and_checkpoints_itself(tmp_path, teacher_cfg, kd_cfg):
    store = RunStore(tmp_path, "s")
    train_run(teacher_cfg, store, RunEnv())
    train_run(kd_cfg, store, RunEnv(stop_after_epoch=2))  # as if killed after epoch 2
    job = cloudpickle.loads(cloudpickle.dumps(TrainJob([[kd_cfg, kd_cfg.replace(temperature=1.0)]], str(tmp_path),
                                                       "s", Machine())))
    again = job.checkpoint()
    assert again.function is job and again.args == () and not again.kwargs
    assert job() == {kd_cfg.run_id: DONE, kd_cfg.replace(temperature=1.0).run_id: DONE}
    m = pd.read_parquet(store.run_dir(kd_cfg) / "metrics.parquet")
    assert not m.duplicated(["epoch", "split"]).any() and sorted(m["epoch"].unique()) == [2, 4]


def test_train_job_raises_when_a_run_fails(tmp_path, kd_cfg):
    store = RunStore(tmp_path, "s")  # the teacher was never trained: the student fails
    with pytest.raises(RuntimeError, match="1 of 1 runs did not finish"):
        TrainJob([[kd_cfg]], str(tmp_path), "s", Machine())()
    assert read_status(store.run_dir(kd_cfg))["status"] == "failed"


def test_a_job_pickled_before_packs_per_job_still_runs(tmp_path, teacher_cfg):
    old = TrainJob([[teacher_cfg]], str(tmp_path), "s", Machine())
    del old.packs, old.workers  # what an older tstudy pickled: one pack, as ``runs``
    old.runs = (teacher_cfg,)
    assert cloudpickle.loads(cloudpickle.dumps(old))() == {teacher_cfg.run_id: DONE}


def test_a_job_pickled_before_machine_settings_still_resumes(tmp_path, teacher_cfg):
    """tests/data/trainjob_bf5bce7.pkl: a TrainJob as submitit pickled it at commit bf5bce7, its
    machine settings as attributes of its own (cpu, sequential packs, checkpoint every 5 steps, no
    decoder processes); today's code reads them as one Machine and trains the job."""
    job = cloudpickle.loads((Path(__file__).parent / "data" / "trainjob_bf5bce7.pkl").read_bytes())
    assert "machine" not in job.__dict__ and job.job_packs() == ((teacher_cfg,),)
    assert job.settings() == Machine(device="cpu", pack_mode="sequential", checkpoint_steps=5, data_workers=0)
    job.root = str(tmp_path)  # pickled with a placeholder root
    assert job() == {teacher_cfg.run_id: DONE}
    assert read_status(RunStore(tmp_path, "s").run_dir(teacher_cfg))["status"] == DONE


def test_dry_run_needs_no_cluster(tmp_path, capsys):
    f = tmp_path / "s.py"
    f.write_text(STUDY.format(epochs=2, t_epochs=1, options="{}"))
    assert main(["launch", str(f), "--root", str(tmp_path / "r"), "--executor", "slurm", "--pack", "2",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 to submit as 3 SLURM jobs in 2 arrays" in out and "after teacher" in out
    assert not (tmp_path / "r").exists()


FAKE_SBATCH = """#!/bin/sh
n=$(cat "{count}" 2>/dev/null || echo 0); echo $((n + 1)) > "{count}"
if [ "$n" -lt {succeed} ]; then echo "Submitted batch job $((4711 + n))"; exit 0; fi
echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)" >&2
exit 1
"""


@pytest.mark.parametrize("succeed", [0, 1])
def test_failed_sbatch_is_one_line_and_leaves_nothing_behind(tmp_path, capsys, monkeypatch, succeed):
    """No reachable controller: sbatch fails. One line with sbatch's message; the files submitit
    wrote for the failed array are removed (an array submitted before it keeps its own)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(count=tmp_path / "count", succeed=succeed)),
                       ("srun", "#!/bin/sh\nexit 0\n"), ("squeue", "#!/bin/sh\nexit 0\n"),
                       ("scontrol", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    f = tmp_path / "s.py"
    f.write_text(STUDY.format(epochs=1, t_epochs=1, options="{}"))
    root = tmp_path / "r"
    assert main(["launch", str(f), "--root", str(root), "--executor", "slurm", "--pack", "2"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("tstudy: error: --executor slurm: submitting failed: sbatch: error: Batch job submission "
                          "failed: Unable to contact slurm controller (connect failure)") and "\n" not in err, err
    logs = root / "slurmtest" / "slurm"
    records = sorted(p.parent.name for p in (root / "runs").glob("*/slurm.json"))
    if succeed == 0:
        assert err.endswith("(nothing submitted)") and not logs.exists() and not records
        assert not list(root.rglob("*.pkl")) and not list(root.rglob(".submission_file_*"))
    else:  # the first array (the teacher and the ce pack) was submitted; the students' array failed
        assert "submitted array 4711 (2 jobs, 2 runs)" in captured.out
        assert "(1 array above submitted; launching again submits the rest)" in err
        files = sorted(p.name for p in logs.iterdir() if not p.is_symlink())  # submitit links the script
        assert files == ["4711_0_submitted.pkl", "4711_1_submitted.pkl", "4711_submission.sh"]
        assert all(p.resolve().exists() for p in logs.iterdir())
        assert len(records) == 2


# =========================================================================== on a real cluster
STUDY = """
from tstudy import RunConfig, Study
teacher = RunConfig(dataset="digits", model="mlp_l", method="ce", epochs={t_epochs}, lr=0.05)
study = Study(name="slurmtest", base=RunConfig(dataset="digits", model="mlp_s", teacher=teacher, method="kd",
              epochs={epochs}, lr=0.05, eval_epochs=(1,)),
              axes={{"method": ["ce", "kd"], "temperature": [1, 4]}}, options={options})
"""
REQUEUE_STUDY = """
from tstudy import RunConfig, Study
study = Study(name="requeue", base=RunConfig(dataset="digits", model="cnn_l", method="ce", epochs=24, lr=0.02,
              batch_size=32, image_size=24, eval_epochs=(6, 12, 18)), options={"slurm": {"cpus_per_job": 1}})
"""
POLL_S = 2.0


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def cluster():
    """The one-node cluster of .ci/slurm_up.sh; under CI its absence is a failure, not a skip."""
    why = None
    if os.environ.get("TSTUDY_SLURM") != "1":
        why = "TSTUDY_SLURM is not 1: start the cluster with `source .ci/slurm_up.sh`"
    elif shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        why = "TSTUDY_SLURM=1 but sbatch/sinfo do not work (is SLURM_CONF exported?)"
    if why:
        if _truthy("CI"):
            pytest.fail(f"CI: the SLURM cluster is not up: {why}")
        pytest.skip(why)


def _tstudy(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("tstudy")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tstudy.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


def _job_ids(store: RunStore) -> set[str]:
    return {slurm.read_record(store.run_dir(i)).get("job_id") for i in store.run_ids_on_disk()} - {None}


@pytest.fixture
def cancel_jobs():
    """Cancel, at the end, the jobs a test submitted (only those) so none outlives a failed test."""
    stores: list[RunStore] = []
    yield stores.append
    ids = sorted({j for s in stores for j in _job_ids(s)})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def _wait_done(study_file: Path, root: Path, n_runs: int, store: RunStore, timeout: float) -> str:
    """Poll `tstudy status` (state from disk) until every run is done; return the last output."""
    t0, out = time.monotonic(), ""
    while time.monotonic() - t0 < timeout:
        r = _tstudy("status", str(study_file), "--root", str(root))
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        if re.search(rf"^\s+{n_runs} done$", out, re.M):
            return out
        if "failed" in out or "ended" in out:
            break
        time.sleep(POLL_S)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((store.study_dir / "slurm").glob("*.err")))
    squeue = subprocess.run(["squeue", "-t", "all"], capture_output=True, text=True).stdout
    pytest.fail(f"study not done after {time.monotonic() - t0:.0f} s:\n{out}\n{squeue}\n{logs}")


def _table(store: RunStore, study: Study) -> pd.DataFrame:
    df, skipped = collect(study, store)
    assert not skipped
    return df.drop(columns=VOLATILE).sort_values(["run_id", "epoch", "split"]).reset_index(drop=True)


def test_slurm_study_equals_local_run(cluster, tmp_path, cancel_jobs):
    f = tmp_path / "study.py"
    f.write_text(STUDY.format(epochs=3, t_epochs=3, options='{"slurm": {"cpus_per_job": 1, "time": 10}}'))
    root, local_root = tmp_path / "slurm_root", tmp_path / "local_root"
    study = load_study(f)
    store = RunStore(root, study.name)
    cancel_jobs(store)
    t0 = time.monotonic()
    r = _tstudy("launch", str(f), "--root", str(root), "--executor", "slurm", "--pack", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"submitted array \d+ \(2 jobs, 2 runs\)\n", r.stdout), r.stdout  # teacher + ce student
    assert re.search(r"submitted job \d+ \(1 job, 2 runs\) after \d+_0", r.stdout), r.stdout  # 2 KD students packed
    launched = time.monotonic() - t0
    # meanwhile, the same study on this machine (one thread, as the jobs: --cpus 1)
    local = RunStore(local_root, study.name)
    assert set(run_local(study.runs(), local, RunEnv(device="cpu"), progress=False).values()) == {DONE}
    out = _wait_done(f, root, len(study.runs()), store, timeout=150)
    elapsed = time.monotonic() - t0
    assert "slurm: no unfinished jobs" in out
    recs = {r.run_id: slurm.read_record(store.run_dir(r)) for r in study.runs()}
    teacher = study.teachers()[0]
    kd = [r for r in study.runs() if r.method == "kd"]
    assert recs[kd[0].run_id]["job_id"] == recs[kd[1].run_id]["job_id"]  # packed: one job
    assert recs[kd[0].run_id]["dependency"] == f"afterok:{recs[teacher.run_id]['job_id']}"
    assert all(Path(rec["stdout"]).is_file() for rec in recs.values())
    epochs = Path(recs[kd[0].run_id]["stdout"]).read_text()
    assert all(f"{r.run_id} epoch {e}/3 " in epochs for r in kd for e in (1, 2, 3))  # one log line per epoch
    a, b = _table(store, study), _table(local, study)
    assert set(a.loc[a["run_id"].isin([r.run_id for r in kd]), "pack"]) == {2}
    # packed on SLURM, one by one here: only the `pack` provenance column may differ; CPU, one thread: exact
    pd.testing.assert_frame_equal(a.drop(columns="pack"), b.drop(columns="pack"), check_exact=True)
    print(f"\nslurm study: launch {launched:.1f} s, all {len(study.runs())} runs done {elapsed:.1f} s after launch")
    # relaunching submits nothing
    r = _tstudy("launch", str(f), "--root", str(root), "--executor", "slurm")
    assert r.returncode == 0 and "0 to submit" in r.stdout, r.stdout + r.stderr


def test_a_job_trains_two_packs_at_once(cluster, tmp_path, cancel_jobs):
    """A job holding two 'GPUs' (CPU workers stand in: 2 CPUs, one thread each) trains two packs
    at once; the table equals the local run's, bit for bit (one thread per run on both sides)."""
    f = tmp_path / "study.py"
    f.write_text(STUDY.format(epochs=3, t_epochs=3, options='{"slurm": {"cpus_per_job": 2, "time": 10, "packs_per_job": 2}}'))
    root, local_root = tmp_path / "slurm_root", tmp_path / "local_root"
    study = load_study(f)
    store = RunStore(root, study.name)
    cancel_jobs(store)
    r = _tstudy("launch", str(f), "--root", str(root), "--executor", "slurm")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(2 packs per job)" in r.stdout, r.stdout
    assert re.search(r"submitted job \d+ \(1 job, 2 runs\)\n", r.stdout), r.stdout  # teacher + ce student at once
    assert re.search(r"submitted job \d+ \(1 job, 2 runs\) after \d+", r.stdout), r.stdout  # 2 KD students at once
    local = RunStore(local_root, study.name)
    assert set(run_local(study.runs(), local, RunEnv(device="cpu"), progress=False).values()) == {DONE}
    _wait_done(f, root, len(study.runs()), store, timeout=150)
    kd = [r for r in study.runs() if r.method == "kd"]
    rec = slurm.read_record(store.run_dir(kd[0]))
    assert rec["job_id"] == slurm.read_record(store.run_dir(kd[1]))["job_id"]
    log = Path(rec["stdout"]).read_text()
    assert "2 run(s) in 2 pack(s), 2 at once" in log, log
    workers = {int(w) for rid in (kd[0].run_id, kd[1].run_id)
               for w in re.findall(rf" tstudy: {rid} epoch \d+/3 .* \(worker (\d)\)$", log, re.M)}
    assert workers == {0, 1}, log  # each pack on its own worker
    a, b = _table(store, study), _table(local, study)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def _wait(cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def _segments(log: str, run_id: str) -> list[list[int]]:
    """The epochs logged by each start of the job, in order."""
    parts = re.split(r"^.* tstudy: job \d+ start #\d+.*$", log, flags=re.M)[1:]
    return [[int(e) for e in re.findall(rf" tstudy: {run_id} epoch (\d+)/", part)] for part in parts]


def test_requeued_job_resumes_from_its_checkpoint(cluster, tmp_path, cancel_jobs):
    """`scontrol requeue` mid-run (the job is killed and restarted), then a preemption signal (USR2:
    submitit calls TrainJob.checkpoint() and requeues): each start resumes from the checkpoint."""
    f = tmp_path / "requeue.py"
    f.write_text(REQUEUE_STUDY)
    study = load_study(f)
    (cfg,) = study.runs()
    root = tmp_path / "root"
    store = RunStore(root, study.name)
    cancel_jobs(store)
    r = _tstudy("launch", str(f), "--root", str(root), "--executor", "slurm")
    assert r.returncode == 0, r.stdout + r.stderr
    d = store.run_dir(cfg)
    rec = slurm.read_record(d)
    log = Path(rec["stdout"])
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    # wait on the files the run writes, not on the scheduler
    _wait(lambda: store.state(cfg).epoch >= 3, 90, "epoch 3")
    at1, t1 = store.state(cfg).epoch, time.time()
    subprocess.run(["scontrol", "requeue", rec["job_id"]], check=True, capture_output=True)
    _wait(lambda: len(_segments(text(), cfg.run_id)) == 2 and len(_segments(text(), cfg.run_id)[1]) >= 2, 90,
          "the second start to train two epochs")
    at2 = store.state(cfg).epoch
    subprocess.run(["scancel", "--signal=USR2", rec["job_id"]], check=True, capture_output=True)
    ref = RunStore(tmp_path / "ref", study.name)  # meanwhile, the same run uninterrupted on this machine
    assert train_run(cfg, ref, RunEnv(device="cpu")).status == DONE
    _wait_done(f, root, 1, store, timeout=120)
    out = text()
    starts = re.findall(r"^(\S+ \S+) tstudy: job \d+ start #(\d+)", out, re.M)
    assert [s[1] for s in starts] == ["1", "2", "3"], out
    assert "preempted or timed out: requeued" in out  # TrainJob.checkpoint() ran on USR2
    seg = _segments(out, cfg.run_id)
    # Each start resumed from its checkpoint, which the run's log names: the epoch after it is the
    # first the start trains, and it is at most one past the last epoch logged before the kill (a kill
    # between an epoch's checkpoint and its log line loses the line, not the epoch).
    resumed = [int(k) for k in re.findall(r"resumed from its checkpoint after epoch (\d+)",
                                          (d / "log.txt").read_text(), re.M)]
    assert len(resumed) == 2 and resumed[0] >= at1 and resumed[1] >= at2, (resumed, at1, at2)
    assert seg[0][0] == 1, seg
    for a, b, k in zip(seg, seg[1:], resumed):
        assert b[0] == k + 1 and a[-1] <= k <= a[-1] + 1, (seg, resumed)  # nothing skipped, nothing lost
    assert seg[2][-1] == cfg.epochs and all(s == list(range(s[0], s[-1] + 1)) for s in seg)
    m = pd.read_parquet(d / "metrics.parquet")  # exactly one row per (epoch, split)
    assert sorted(zip(m["epoch"], m["split"])) == sorted((e, s) for e in cfg.eval_points for s in ("train", "test"))
    m_ref = pd.read_parquet(ref.run_dir(cfg) / "metrics.parquet")
    pd.testing.assert_frame_equal(m.drop(columns=VOLATILE), m_ref.drop(columns=VOLATILE), check_exact=True)
    restart = time.mktime(time.strptime(starts[1][0], "%Y-%m-%d %H:%M:%S"))
    print(f"\nscontrol requeue at epoch {at1}: restarted {restart - t1:.0f} s later, resumed at epoch {seg[1][0]}; "
          f"USR2 at epoch {at2}: resumed at epoch {seg[2][0]}")
