"""Settings a user can get wrong end with one line naming the setting and a valid choice, and a
non-zero exit: up-front validation (exit 2) and what only a started run can tell (exit 1). The runs
go through the entry point's ``run`` in this process (tiny model, synthetic data, a few steps)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import train.__main__ as entry
from tests.tiny import TINY_RUN
from train.config import ConfigError, RunConfig, register_configs, validate

torch.set_num_threads(1)

# TINY_RUN (64 synthetic images, batch 8: 8 steps an epoch) made cheaper still for in-process runs.
FAST = [
    *TINY_RUN,
    "wandb.enabled=false",
    "data.num_workers=0",
    "data.aug.rand_augment=null",
    "optim.warmup_epochs=0",
    "max_steps=2",
]


def compose_raw(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=entry.CONFIG_DIR, version_base=None):
        return compose(config_name="config", overrides=[*FAST, *overrides])


def make_cfg(*overrides: str) -> RunConfig:
    return OmegaConf.to_object(compose_raw(*overrides))


def run_main(capsys, monkeypatch, *overrides: str) -> tuple[int, list[str]]:
    """``python -m train OVERRIDES`` in this process: (exit code, non-empty stderr lines)."""
    monkeypatch.setattr(entry, "_setup_logging", lambda rank: None)  # leave pytest's log capture alone
    raw = compose_raw(*overrides)
    capsys.readouterr()
    try:
        entry.run(raw)
        code = 0
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def assert_one_line(code: int, lines: list[str], expected_code: int, *parts: str) -> None:
    assert code == expected_code, lines
    assert len(lines) == 1, lines  # the message alone: no traceback, no echo of a config
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        # accum_steps is checked before it divides batch_size (was a ZeroDivisionError)
        (["optim.accum_steps=0"], "optim.accum_steps=0 is not valid; use 1 or more"),
        (["log_every=0"], "log_every=0 is not valid; use 1 or more"),
        (["task.eval_every=-1"], "task.eval_every=-1 is not valid; use 0 (only at the end of the run)"),
        (["task.vis_every=-5"], "task.vis_every=-5 is not valid; use 0 (never)"),
        (["checkpoint.every_steps=-1"], "checkpoint.every_steps=-1 is not valid; use 0 (at epoch ends only)"),
        (["checkpoint.keep_last=-1"], "checkpoint.keep_last=-1 is not valid; use 0 (keep every checkpoint)"),
        (["checkpoint.keep_every=-2"], "checkpoint.keep_every=-2 is not valid; use 0 (none)"),
        # timm's Mixup asserts on an odd batch at the first step
        (["batch_size=7"], "batch_size=7 gives an odd micro batch of 7 per rank"),
        (
            ["batch_size=14", "optim.accum_steps=2"],
            "use batch_size=16, or data.aug.mixup=0 data.aug.cutmix=0",
        ),
    ],
)
def test_bad_setting_is_one_clear_error(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides), 1)
    assert message in str(err.value)


def test_odd_micro_batch_on_two_ranks_names_an_even_total():
    with pytest.raises(ConfigError, match=r"odd micro batch of 3 per rank \(world size 2.*use batch_size=8,"):
        validate(make_cfg("batch_size=6", "strategy=ddp"), 2)


@pytest.mark.parametrize(
    "overrides",
    [
        ["task.eval_every=0", "checkpoint.every_steps=0", "checkpoint.keep_last=0", "task.vis_every=0"],
        ["batch_size=7", "data.aug.mixup=0", "data.aug.cutmix=0"],  # no Mixup: any batch
        ["task=simmim", "batch_size=7", "data.mask.mask_patch_size=8"],  # SimMIM never mixes
    ],
)
def test_valid_edge_settings_pass(overrides):
    validate(make_cfg(*overrides), 1)


def test_validation_error_through_the_entry_point(capsys, monkeypatch, tmp_path):
    code, lines = run_main(capsys, monkeypatch, "optim.accum_steps=0", f"run_dir={tmp_path / 'r'}")
    assert_one_line(code, lines, 2, "config error: optim.accum_steps=0 is not valid")


def test_fewer_batches_than_accum_steps_names_a_batch_size_that_fits(capsys, monkeypatch, tmp_path):
    # 64 images, micro batch 128 / 8 = 16: 4 micro batches an epoch, 8 needed for one step
    code, lines = run_main(
        capsys, monkeypatch, "batch_size=128", "optim.accum_steps=8", f"run_dir={tmp_path / 'r'}"
    )
    assert_one_line(code, lines, 1, "error: optim.accum_steps=8 needs 8 micro batches", "use batch_size=64")
    # and the suggestion works
    code, lines = run_main(
        capsys,
        monkeypatch,
        "batch_size=64",
        "optim.accum_steps=8",
        "max_steps=1",
        f"run_dir={tmp_path / 'ok'}",
    )
    assert code == 0, lines


def test_eval_every_zero_evaluates_only_at_the_end(capsys, monkeypatch, tmp_path):
    run_dir = tmp_path / "r"
    # 32 images, batch 8: 4 steps an epoch, 3 epochs; synthetic data ignores the path
    code, lines = run_main(
        capsys, monkeypatch, "data.synthetic_samples=32", "data.val_path=synthetic", "task.eval_every=0",
        "epochs=3", "max_steps=null", f"run_dir={run_dir}",
    )  # fmt: skip
    assert code == 0, lines
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/top1" in r] == [12]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny run stopped after 2 of its epoch's 8 steps (checkpoint step_00000002), written with
    data.num_workers=0 and batch_size=8."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(entry, "_setup_logging", lambda rank: None)
        entry.run(compose_raw(f"run_dir={run_dir}"))
    return run_dir


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_refused_run_leaves_the_existing_record_alone(finished_run, capsys, monkeypatch, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    record = (run_dir / "config.yaml").read_text()
    assert "seed: 0" in record
    code, lines = run_main(capsys, monkeypatch, "seed=5", f"run_dir={run_dir}")
    assert_one_line(code, lines, 1, "already holds checkpoints", "resume=auto")
    assert (run_dir / "config.yaml").read_text() == record
    # an accepted resume records the command that continues the run
    code, lines = run_main(capsys, monkeypatch, "resume=auto", "max_steps=3", f"run_dir={run_dir}")
    assert code == 0, lines
    assert "max_steps: 3" in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["data.num_workers=2"], "set data.num_workers=0 (this run: 2)"),
        (
            ["batch_size=16"],
            "set batch_size=8 and optim.accum_steps=1 (a micro batch of 8 per rank; this run: 16)",
        ),
        (["seed=3"], "set seed=0 (this run: 3)"),
    ],
)
def test_resume_with_another_data_layout_names_the_saved_settings(
    finished_run, capsys, monkeypatch, tmp_path, overrides, expected
):
    run_dir = copy_of(finished_run, tmp_path)
    code, lines = run_main(
        capsys, monkeypatch, "resume=auto", "max_steps=4", *overrides, f"run_dir={run_dir}"
    )
    assert_one_line(code, lines, 1, "error: resume from", expected, "task.init_from=")
