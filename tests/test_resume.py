"""Resumable experiments: a run killed at any step and restarted with resume=auto ends bitwise
equal to an uninterrupted run; saves are atomic; preemption saves and exits 75; bad resumes fail
loudly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from tests.tiny import TINY_RUN, assert_bitwise_equal, newest_state
from train.checkpoint import DCP_DIR, TRAINER_FILE, checkpoint_dirs
from train.preemption import REQUEUE_EXIT_CODE

# Full default augmentation (RandAugment, mixup/cutmix with numpy RNG, drop path with torch RNG)
# so every random state a resume must restore is in play.
RUN = [
    *TINY_RUN,
    "model.drop_path_rate=0.2",
    "max_steps=10",  # 8 steps per epoch: the run crosses an epoch boundary
    "optim.warmup_steps=3",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=3",
    "log_every=1",
]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def launch(run_dir: Path, *extra: str, ranks: int = 1) -> subprocess.Popen:
    prefix = [sys.executable, "-m", "train"]
    if ranks > 1:
        prefix = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
            "-m",
            "train",
        ]
        if not any(e.startswith("strategy=") for e in extra):
            extra = ("strategy=ddp", *extra)
    cmd = [*prefix, *RUN, f"run_dir={run_dir}", *extra]
    return subprocess.Popen(
        cmd,
        cwd=run_dir.parent,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # SIGKILL reaches torchrun and every worker, like a node failure
    )


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(run_dir: Path, *extra: str, ranks: int = 1) -> subprocess.CompletedProcess:
    return finish(launch(run_dir, *extra, ranks=ranks))


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((r["step"] for r in rows), default=0)


def kill_after(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.time() + 240
    while steps_logged(run_dir) < step:
        assert proc.poll() is None, finish(proc).stderr[-2000:]
        assert time.time() < deadline, "run did not reach the kill step"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    r = run(run_dir, "data.num_workers=2")
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("seed", [1, 9])  # kills after steps 3 and 8 (an epoch end)
def test_sigkill_at_a_random_step_then_resume_is_bitwise_equal(reference, tmp_path, seed):
    kill_step = random.Random(seed).randint(1, 9)
    run_dir = tmp_path / "run"
    kill_after(launch(run_dir, "data.num_workers=2"), run_dir, kill_step)
    had_checkpoint = bool(checkpoint_dirs(run_dir))
    r = run(run_dir, "data.num_workers=2", "resume=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("resumed from" in r.stderr) == had_checkpoint, r.stderr[-2000:]
    assert_bitwise_equal(newest_state(run_dir), newest_state(reference))
    first = torch.load(checkpoint_dirs(reference)[-1] / TRAINER_FILE, weights_only=True)["state"]
    again = torch.load(checkpoint_dirs(run_dir)[-1] / TRAINER_FILE, weights_only=True)["state"]
    assert again["step"] == first["step"] == 10 and again["samples_seen"] == first["samples_seen"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_sigkill_mid_epoch_then_resume_is_bitwise_equal(tmp_path, strategy):
    reference = tmp_path / "reference"
    r = run(reference, "data.num_workers=0", f"strategy={strategy}", ranks=2)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "run"
    kill_after(launch(run_dir, "data.num_workers=0", f"strategy={strategy}", ranks=2), run_dir, 5)
    r = run(run_dir, "data.num_workers=0", "resume=auto", f"strategy={strategy}", ranks=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    assert_bitwise_equal(newest_state(run_dir), newest_state(reference))


def test_sigterm_saves_the_current_step_and_exits_for_requeue(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, "data.num_workers=2")
    while steps_logged(run_dir) < 5:
        assert proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    r = finish(proc)
    assert r.returncode == REQUEUE_EXIT_CODE, r.stderr[-3000:]
    stopped = int(checkpoint_dirs(run_dir)[-1].name.split("_")[1])
    assert stopped >= 5 and stopped == steps_logged(run_dir), (
        "the checkpoint is not of the step the run stopped at"
    )
    r = run(run_dir, "data.num_workers=2", "resume=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_bitwise_equal(newest_state(run_dir), newest_state(reference))


def test_resume_on_another_world_size_reshards(tmp_path):
    run_dir = tmp_path / "run"
    r = run(run_dir, "data.num_workers=0", "max_steps=4", ranks=2)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = newest_state(run_dir)["model"]
    r = run(run_dir, "data.num_workers=0", "resume=auto", "max_steps=6", "strategy=ddp")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "written by 2 ranks, this run has 1" in r.stderr and "resumed from" in r.stderr
    assert checkpoint_dirs(run_dir)[-1].name == "step_00000006"
    assert not torch.equal(newest_state(run_dir)["model"]["head.weight"], saved["head.weight"])


def test_corrupt_or_foreign_checkpoints_are_errors_not_fallbacks(reference, tmp_path):
    run_dir = tmp_path / "run"
    r = run(run_dir, "data.num_workers=0", "max_steps=4")
    assert r.returncode == 0, r.stderr[-3000:]
    newest = checkpoint_dirs(run_dir)[-1]
    data = (newest / TRAINER_FILE).read_bytes()
    (newest / TRAINER_FILE).write_bytes(data[: len(data) // 2])
    r = run(run_dir, "data.num_workers=0", "resume=auto", "max_steps=6")
    assert r.returncode == 1
    assert f"{newest / TRAINER_FILE} is unreadable" in r.stderr and "step_00000002" in r.stderr
    assert "Traceback" not in r.stderr

    foreign = checkpoint_dirs(reference)[-1]
    r = run(tmp_path / "other", "data.num_workers=0", f"resume={foreign}")
    assert r.returncode == 1 and "belongs to run directory" in r.stderr and "task.init_from" in r.stderr

    r = run(tmp_path / "fresh", "data.num_workers=0", "max_steps=2")
    assert r.returncode == 0
    r = run(tmp_path / "fresh", "data.num_workers=0", "max_steps=2")
    assert r.returncode == 1 and "already holds checkpoints" in r.stderr and "resume=auto" in r.stderr


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """The save is interrupted after the model/optimizer were written but before the rename."""
    from tests.test_train import CPU, make_cfg
    from train.trainer import Trainer

    cfg = make_cfg("batch_size=8", "wandb.enabled=false", f"run_dir={tmp_path / 'run'}", "max_steps=4")
    trainer = Trainer(cfg, CPU, {})
    trainer.setup()
    batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    trainer._train_step(iter([batch]))
    trainer.save()
    trainer._train_step(iter([batch]))

    def dies_while_writing(directory: Path) -> None:
        trainer.strategy.__class__.save(trainer.strategy, directory)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer.strategy, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_00000001"]
    assert list((tmp_path / "run" / "checkpoints").glob(".tmp_step_00000002"))
    monkeypatch.undo()
    trainer.save()  # the next save clears the leftover and completes
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_00000001", "step_00000002"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp_*"))


def test_second_signal_during_the_save_does_not_corrupt_it(tmp_path, monkeypatch):
    from tests.test_train import CPU, make_cfg
    from train.preemption import Preempted
    from train.trainer import Trainer

    cfg = make_cfg("batch_size=8", "wandb.enabled=false", f"run_dir={tmp_path / 'run'}", "max_steps=6")
    trainer = Trainer(cfg, CPU, {})
    trainer.setup()
    real_save = trainer.strategy.save
    signals_sent = []

    def signalled_save(directory: Path) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the first signal lands at step 1's end ...
        signals_sent.append(1)
        real_save(directory)
        os.kill(os.getpid(), signal.SIGUSR1)  # ... and another while saving

    trainer.strategy.save = signalled_save
    monkeypatch.setattr(cfg.checkpoint, "every_steps", 1)
    with pytest.raises(Preempted) as stop:
        trainer.fit()
    assert stop.value.step == 1 and signals_sent
    newest = checkpoint_dirs(tmp_path / "run")[-1]
    assert newest.name == "step_00000001"
    state = torch.load(newest / TRAINER_FILE, weights_only=True)["state"]
    assert state["step"] == 1
    assert _load_state_dict_from_keys("model", checkpoint_id=str(newest / DCP_DIR))["model"]


def test_export_any_checkpoint_to_safetensors_that_finetuning_loads(reference, tmp_path):
    import swinv2
    from train.export_cli import main as export

    out = tmp_path / "exported.safetensors"
    export([str(reference), str(out)])
    model = swinv2.build_model(
        "swinv2_tiny_window8_256",
        img_size=32,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 2),
        window_size=4,
        num_classes=10,
    )
    report = swinv2.load_pretrained(model, out)
    assert report.head == "loaded"
    assert torch.equal(model.state_dict()["head.weight"], newest_state(reference)["model"]["head.weight"])
