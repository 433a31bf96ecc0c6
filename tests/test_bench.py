"""The benchmark's tiny CPU version (what CI can run; the numbers mean nothing)."""
import json

from tstudy import bench


def test_tiny_bench_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    report = bench.main(["--tiny", "--device", "cpu", "--out", str(out), "--steps", "2", "--warmup", "1"])
    assert json.loads(out.read_text()) == report
    assert report["tiny"] and report["device"] == "cpu" and report["versions"]["torch"]
    rows = report["results"]
    settings = {(r["setting"], r["batch"], r["k"], r["precision"]) for r in rows}
    assert ("classic", 32, 1, "fp32") in settings and ("tstudy_packed", 32, 4, "bf16") in settings
    assert ("tstudy", 64, 1, "fp32") in settings and ("tstudy_sequential", 32, 2, "bf16") in settings
    assert all(r["images_per_s"] > 0 and r["ratio_to_classic"] > 0 for r in rows)
    assert rows[0]["setting"] == "classic" and rows[0]["ratio_to_classic"] == 1.0
    assert {r.get("impl") for r in rows if r["setting"] == "tstudy_packed"} == {"grouped"}
    assert all(r["graph"] == "eager steps (CUDA graph off)" for r in rows[1:])  # no graphs on the CPU


def test_settings_compare_graphs_on_the_gpu():
    rows = bench.settings(tiny=False)
    eager = {(r["setting"], r["batch"], r["k"]) for r in rows if not r["graphs"] and r["setting"] != "classic"}
    assert eager == {("tstudy", 64, 1), ("tstudy", 256, 1), ("tstudy_packed", 64, 8)}
    assert {(r["setting"], r["k"]) for r in rows if r["graphs"]} >= {("tstudy_packed", 8), ("tstudy_packed", 32)}


def test_tiny_bench_profile(tmp_path):
    prof = tmp_path / "prof.txt"
    report = bench.main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "b.json"), "--steps", "1",
                         "--warmup", "1", "--only", "tstudy_packed", "--ks", "2", "--precisions", "fp32",
                         "--profile", str(prof)])
    assert [r["setting"] for r in report["results"]] == ["tstudy_packed"]
    assert report["results"][0]["profiled_step_ms"] > 0 and "=====" in prof.read_text()


def test_device_slug():
    assert bench.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_bookkeeping_bench_times_every_command_on_a_real_root(tmp_path):
    """The CPU-sized bookkeeping bench: a real (tiny) study of 50 students, every command timed;
    the table its collect wrote is the one the per-run implementation gives for that root."""
    import pandas as pd

    from test_collect import legacy_collect  # tests/ is on sys.path (pytest)
    from tstudy.results import RESULTS
    from tstudy.study import load_study

    out, root = tmp_path / "bk.json", tmp_path / "root"
    report = bench.main(["--bookkeeping", "50", "--recipe", "tiny", "--keep", str(root), "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["runs"] == 51 and report["rows"] == 2 + 50 * 4  # teacher: 1 evaluation; students: 2
    cmds = report["commands"]
    assert list(cmds) == ["plan", "plan_10x_empty_root", "status", "collect_cold", "collect_warm", "figures_cold",
                          "launch_dry_run_pack8"]
    assert all(c["rc"] == 0 and c["seconds"] > 0 and c["peak_mb"] > 10 for c in cmds.values()), cmds
    assert "51 done" in " ".join(cmds["status"]["head"])
    assert "501 not launched" in " ".join(cmds["plan_10x_empty_root"]["head"])
    assert "[51 metrics files read]" in " ".join(cmds["collect_cold"]["tail"])
    assert "[unchanged]" in " ".join(cmds["collect_warm"]["tail"])
    assert "trained for real" in report["how"]
    from tstudy.run_summary import read_summary

    assert all(read_summary(d) is not None for d in (root / "runs").iterdir())  # copies keep valid summaries
    study = load_study(root / "bookkeeping.py")
    old, skipped = legacy_collect(study, root)
    assert not skipped
    old.to_parquet(tmp_path / "old.parquet", index=False)
    pd.testing.assert_frame_equal(pd.read_parquet(root / "bookkeeping" / RESULTS), pd.read_parquet(tmp_path / "old.parquet"))
