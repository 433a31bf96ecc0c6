"""The machine settings: one frozen carrier (tstudy.machine.Machine), one launch flag per field,
passed whole from the CLI to the engine."""
from __future__ import annotations

import dataclasses
import pickle

import pytest

from tstudy.cli import _parser
from tstudy.engine import RunEnv
from tstudy.errors import ConfigError
from tstudy.machine import FLAGS, Machine


def test_every_setting_is_a_launch_flag_and_the_flags_build_it():
    args = _parser().parse_args(["launch", "s.py", "--device", "cpu", "--data-root", "/d", "--pack-mode",
                                 "network", "--cuda-graphs", "off", "--data-workers", "3", "--decoder", "dali",
                                 "--checkpoint-steps", "7"])
    assert Machine.from_args(args) == Machine(device="cpu", data_root="/d", pack_mode="network", cuda_graphs="off",
                                              data_workers=3, decoder="dali", checkpoint_steps=7)
    defaults = Machine.from_args(_parser().parse_args(["launch", "s.py"]))
    assert defaults == Machine(device="auto")  # a launch resolves the device; every other default is the field's
    assert {f.name: f.default for f in dataclasses.fields(Machine) if f.name != "device"} == \
        {n: kw["default"] for n, kw in FLAGS.items() if n != "device"}


@pytest.mark.parametrize("field, value, line", [
    ("pack_mode", "fast", "--pack-mode: unknown value 'fast'; valid: auto, sequential, network"),
    ("cuda_graphs", "on", "--cuda-graphs: unknown value 'on'; valid: auto, off"),
    ("decoder", "gpu", "--decoder: unknown value 'gpu'; valid: cpu, dali"),
    ("data_workers", -1, "--data-workers: must be >= 0 (0: decode in the training process), got -1"),
    ("checkpoint_steps", 2.5, "--checkpoint-steps: must be >= 0 (0: at epoch ends only), got 2.5"),
])
def test_a_bad_setting_is_one_line_naming_its_flag(field, value, line):
    with pytest.raises(ConfigError) as e:
        Machine(**{field: value})
    assert str(e.value) == line
    with pytest.raises(ConfigError):  # RunEnv's keywords are the same settings, checked by the same rule
        RunEnv(**{field: value})


def test_run_env_carries_the_settings_whole_and_the_callbacks_beside_them():
    m = Machine(device="cpu", checkpoint_steps=3)
    env = RunEnv(m, stop_after_epoch=2)
    assert env.machine is m and env.stop_after_epoch == 2
    assert RunEnv(m, pack_mode="network").machine == m.replace(pack_mode="network")  # keywords change a copy
    assert m.pack_mode == "auto"  # frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.device = "cuda"  # type: ignore[misc]
    with pytest.raises(AttributeError):  # a setting is changed on the Machine, never as a stray attribute
        env.pack_mode = "network"  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(m)) == m  # what worker processes and SLURM jobs receive


def test_from_mapping_takes_what_an_old_pickle_kept_and_defaults_the_rest():
    assert Machine.from_mapping({"device": "cuda", "data_root": "/d", "packs": (), "root": "r"}) == \
        Machine(device="cuda", data_root="/d")
