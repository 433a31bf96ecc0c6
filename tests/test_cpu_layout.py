"""The CPU's float32 layout: channels_last (NHWC) is the default because it is faster there, and it
changes training only at float32-rounding level against the NCHW path it replaced; the CPU
benchmark section (``python -m tstudy.bench --cpu``) runs and writes its JSON."""
import json

import torch

from tstudy.bench import synthetic_splits
from tstudy.bench_steps import engine_group
from tstudy.device_data import DeviceData, uses_channels_last


def _train(channels_last: bool, steps: int = 5, k: int = 2, mode: str = "sequential") -> list[list[torch.Tensor]]:
    torch.manual_seed(0)
    data = DeviceData(synthetic_splits(512, 64, 20, 3, 16), torch.device("cpu"))
    data.channels_last = channels_last
    with engine_group(data, "tinyimagenet", "resnet8", "resnet8", 64, "fp32", k, mode, graphs=False,
                      image_size=16) as group:
        for i, xy in enumerate(data.epoch_batches(0, 1, 64, "crop_flip")):
            if i == steps:
                break
            group.step(i, xy)
        if group.pack is not None:
            group.pack.sync()
        return [[p.detach().clone().contiguous() for p in s.model.parameters()] for s in group.students]


def test_channels_last_is_the_cpu_default():
    assert uses_channels_last(torch.device("cpu")) and uses_channels_last(torch.device("cuda"))
    assert DeviceData(synthetic_splits(8, 8, 2, 3, 8), torch.device("cpu")).channels_last


def test_channels_last_changes_training_only_at_rounding_level():
    nchw, nhwc = _train(False), _train(True)
    for a_run, b_run in zip(nchw, nhwc):
        for a, b in zip(a_run, b_run):
            scale = a.abs().max().item() + 1e-12
            assert (a - b).abs().max().item() <= 1e-4 * max(scale, 1.0)
    # and it is not the same computation (the test would pass vacuously if the flag did nothing)
    assert any(not torch.equal(a, b) for ar, br in zip(nchw, nhwc) for a, b in zip(ar, br))


def test_cpu_bench_section_writes_its_json(tmp_path):
    from tstudy import bench

    out = tmp_path / "cpu.json"
    report = bench.main(["--cpu", "--tiny", "--only", "layout,pack", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = {(r["section"], r.get("layout"), r.get("precision"), r.get("mode")): r for r in report["results"]}
    assert rows[("layout", "nchw", "fp32", None)]["speedup_vs_nchw_fp32"] == 1.0
    assert all(r["images_per_s"] > 0 and r["student_epoch_s"] > 0 for r in report["results"])
    assert {r["section"] for r in report["results"]} == {"layout", "pack"}
