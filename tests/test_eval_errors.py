"""task=eval reports a checkpoint's accuracy only when its classification head was loaded (or
mapped 22k->1k); a head that had to start fresh (a SimMIM checkpoint, another class count) is a
one-line error instead of a chance-level result. Tiny real runs through the entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train.__main__ as entry
from swinv2 import build_model, export_weights
from tests.test_config_errors import assert_one_line, compose_raw, run_main

TINY_ARCH = {"img_size": 32, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}


def tiny_run(run_dir: Path, *overrides: str) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(entry, "_setup_logging", lambda rank: None)
        entry.run(compose_raw("max_steps=1", f"run_dir={run_dir}", *overrides))
    return run_dir


@pytest.fixture(scope="module")
def simmim_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("simmim")
    return tiny_run(root / "run", "task=simmim", "data.mask.mask_patch_size=8", "task.norm_target_window=7")


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("finetune") / "run", "task=finetune")  # 10 classes


def test_headless_checkpoint_is_refused(simmim_run, capsys, monkeypatch, tmp_path):
    code, lines = run_main(
        capsys, monkeypatch, "task=eval", f"task.init_from={simmim_run}", f"run_dir={tmp_path}"
    )
    assert_one_line(
        code, lines, 1, f"error: task.init_from={simmim_run} has no classification head",
        f"task=finetune task.init_from={simmim_run}",
    )  # fmt: skip
    assert not (tmp_path / "result_eval.json").exists()


def test_head_of_another_class_count_is_refused(finetune_run, capsys, monkeypatch, tmp_path):
    code, lines = run_main(
        capsys,
        monkeypatch,
        "task=eval",
        f"task.init_from={finetune_run}",
        "data.num_classes=5",
        f"run_dir={tmp_path}",
    )
    assert_one_line(
        code, lines, 1, "has a head for 10 classes but data.num_classes=5; set data.num_classes=10"
    )  # the head-mismatch warning is not printed as well


def test_loaded_head_is_evaluated_and_the_training_record_kept(finetune_run, capsys, monkeypatch):
    record = (finetune_run / "config.yaml").read_text()
    code, lines = run_main(
        capsys, monkeypatch, "task=eval", f"task.init_from={finetune_run}", f"run_dir={finetune_run}"
    )
    assert code == 0, lines
    assert json.loads((finetune_run / "result_eval.json").read_text())["samples"] == 64
    # evaluating inside the training run's directory records the evaluation beside, not over, its config
    assert (finetune_run / "config.yaml").read_text() == record
    assert "name: eval" in (finetune_run / "config_eval.yaml").read_text()


def test_22k_head_sliced_to_1k_is_evaluated(capsys, monkeypatch, tmp_path):
    weights = export_weights(
        build_model("swinv2_tiny_window8_256", num_classes=21841, **TINY_ARCH), tmp_path / "w.safetensors"
    )
    code, lines = run_main(
        capsys, monkeypatch, "task=eval", f"task.init_from={weights}", "data.num_classes=1000",
        f"run_dir={tmp_path / 'eval'}",
    )  # fmt: skip
    assert code == 0, lines
    assert (tmp_path / "eval" / "config.yaml").is_file()
