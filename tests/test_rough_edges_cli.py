"""Rough edges of the command line (issue 13): a bad --device, --seeds or --pack, a directory
given as the study file, a dry run that skipped the launch's checks, and counts in the plural.
Each mistake is one line `tstudy: error: <field>: ...`, exit code 2, with nothing written."""
import textwrap
from pathlib import Path

import pytest
import torch

from analysis.report import _what_was_run
from tstudy.cli import main
from tstudy.results import collect
from tstudy.store import RunStore
from tstudy.study import load_study

TINY = """
from tstudy import RunConfig, Study
teacher = RunConfig(model="mlp_l", epochs=1)
study = Study(name="one", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=1))
"""


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    f = tmp_path / "one.py"
    f.write_text(textwrap.dedent(TINY))
    return f


def one_line_error(capsys, field: str) -> str:
    """The captured stderr, checked to be one `tstudy: error: <field>: ...` line."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tstudy: error: {field}: ") and "\n" not in err, err
    return err


# --------------------------------------------------------------------------- item 1: --device
@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", "cuda0"])
@pytest.mark.parametrize("extra", [[], ["--dry-run"], ["--executor", "slurm", "--dry-run"]])
def test_unknown_device_is_one_line(study_file, tmp_path, capsys, device, extra):
    root = tmp_path / "root"
    assert main(["launch", str(study_file), "--root", str(root), "--device", device, *extra]) == 2
    err = one_line_error(capsys, "--device")
    assert "cpu, cuda, cuda:N or auto" in err and repr(device) in err
    assert not root.exists()


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_cuda_without_a_gpu_is_one_line(study_file, tmp_path, capsys, monkeypatch, dry_run):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    root = tmp_path / "root"
    for device in ("cuda", "cuda:0"):
        assert main(["launch", str(study_file), "--root", str(root), "--device", device, *dry_run]) == 2
        assert "needs a CUDA GPU" in one_line_error(capsys, "--device")
    assert not root.exists()
    assert main(["launch", str(study_file), "--root", str(root), "--device", "auto", "--dry-run"]) == 0  # cpu


def test_gpu_index_beyond_the_visible_ones_is_one_line(study_file, tmp_path, capsys):
    root = tmp_path / "root"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert main(["launch", str(study_file), "--root", str(root), "--device", f"cuda:{n}", "--dry-run"]) == 2
    one_line_error(capsys, "--device")
    assert not root.exists()


# --------------------------------------------------------------------------- item 4: --seeds
@pytest.mark.parametrize("seeds", ["0,a", "", "0..3", "0-4", "-1", "-1,2", "1,,2", "1,1", "1.5"])
def test_bad_seeds_are_one_line(study_file, tmp_path, capsys, seeds):
    assert main(["plan", str(study_file), "--root", str(tmp_path / "root"), "--seeds", seeds]) == 2
    err = one_line_error(capsys, "--seeds")
    assert "separated by commas, such as 0,1,2" in err and repr(seeds) in err


def test_good_seeds_replace_the_study_seeds(study_file, tmp_path, capsys):
    assert main(["plan", str(study_file), "--root", str(tmp_path / "root"), "--seeds", "3, 5"]) == 0
    assert "3 runs (1 teacher, 2 students)" in capsys.readouterr().out


# --------------------------------------------------------------------------- item 5: --pack
@pytest.mark.parametrize("executor", ["local", "slurm"])
@pytest.mark.parametrize("pack", ["0", "-2"])
def test_pack_below_one_is_refused_naming_the_flag(study_file, tmp_path, capsys, executor, pack):
    root = tmp_path / "root"
    assert main(["launch", str(study_file), "--root", str(root), "--executor", executor, "--pack", pack,
                 "--dry-run"]) == 2
    assert one_line_error(capsys, "--pack") == f"tstudy: error: --pack: expected an integer >= 1, got {pack}"
    assert not root.exists()


# --------------------------------------------------------------------------- item 7: a directory
def test_a_directory_as_study_file_says_so(tmp_path, capsys):
    assert main(["plan", str(tmp_path)]) == 2
    err = one_line_error(capsys, "study file")
    assert "is a directory" in err and "does not exist" not in err


# --------------------------------------------------------------------------- item 11: dry run = preflight
@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_dry_run_makes_the_checks_of_a_launch(study_file, tmp_path, capsys, executor):
    root = tmp_path / "root"
    cmd = ["launch", str(study_file), "--root", str(root), "--executor", executor, "--dry-run"]
    assert main([*cmd, "--data-root", "/no/such/dir"]) == 2
    assert "'/no/such/dir' is not a directory" in one_line_error(capsys, "--data-root")
    cifar = tmp_path / "cifar.py"
    cifar.write_text(textwrap.dedent(TINY).replace('model="mlp_l"', 'model="mlp_l", dataset="cifar100"')
                     .replace('model="mlp_s"', 'model="mlp_s", dataset="cifar100"'))
    cmd[1] = str(cifar)
    assert main([*cmd, "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cifar100" in err and "not found" in err and "\n" not in err, err
    assert not root.exists()
    cmd[1] = str(study_file)
    assert main(cmd) == 0  # digits is embedded: the checks pass, and a dry run writes nothing
    assert not root.exists()


# --------------------------------------------------------------------------- item 21: plurals, one header
def test_counts_are_in_the_plural_only_when_plural(study_file, tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["plan", str(study_file), "--root", str(root)]) == 0
    assert "study one: 2 runs (1 teacher, 1 student) under" in capsys.readouterr().out
    assert main(["launch", str(study_file), "--root", str(root), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("study one: 2 runs, 0 done or running, 2 to launch") == 1, out  # the header, once
    assert main(["collect", str(study_file), "--root", str(root)]) == 0
    assert "rows from 2 runs" in capsys.readouterr().out
    study, store = load_study(study_file), RunStore(root, "one")
    df, _ = collect(study, store)
    text = _what_was_run(study, store, df)
    assert "2 runs in the table (1 teacher, 1 student)" in text and "The study plans 2 runs." in text
    lone = tmp_path / "lone.py"
    lone.write_text("from tstudy import RunConfig, Study\n"
                    "study = Study(name='lone', base=RunConfig(model='mlp_s', epochs=1))\n")
    assert main(["plan", str(lone), "--root", str(root)]) == 0
    assert "study lone: 1 run (0 teachers, 1 student)" in capsys.readouterr().out
    assert main(["launch", str(lone), "--root", str(root), "--dry-run"]) == 0
    assert "study lone: 1 run, 0 done or running, 1 to launch" in capsys.readouterr().out
