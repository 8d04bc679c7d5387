"""Checkpoint directories stay truthful: resuming an older checkpoint sets the newer ones of the
abandoned branch aside (kept, never pruned or auto-resumed), re-saving a step survives a kill at
any point, and a fairscale run's checkpoint exports and initialises like any other."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.tiny import TINY_MODEL, TINY_RUN
from train.checkpoint import TRAINER_FILE, Checkpointer, checkpoint_dirs, read_model_weights

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def _writes(tag: str):
    """A strategy's save: one file holding ``tag``."""

    def save(directory: Path) -> None:
        (directory / "weights.txt").write_text(tag)

    return save


def _tag(checkpoint: Path) -> str:
    return (checkpoint / "weights.txt").read_text()


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path, caplog):
    run = tmp_path / "run"
    first = Checkpointer(run, keep_last=2, keep_every=0, is_main=True)
    for step in (100, 200):
        first.save(step, _writes(f"first run {step}"), {"step": step})

    resumed = Checkpointer(run, keep_last=1, keep_every=0, is_main=True)
    with caplog.at_level(logging.WARNING, logger="train.checkpoint"):
        path = resumed.resolve(str(run / "checkpoints" / "step_00000100"))
    assert path.name == "step_00000100" and _tag(path) == "first run 100"
    resumed.save(150, _writes("resumed 150"), {"step": 150})

    # Pruning and resume=auto see only the resumed branch ...
    assert [p.name for p in checkpoint_dirs(run)] == ["step_00000150"]
    again = Checkpointer(run, keep_last=1, keep_every=0, is_main=True).resolve("auto")
    assert again.name == "step_00000150" and _tag(again) == "resumed 150"
    # ... and the abandoned one is kept, intact, where the log says.
    (aside,) = (run / "checkpoints").glob("abandoned_*")
    assert [p.name for p in aside.iterdir()] == ["step_00000200"]
    assert _tag(aside / "step_00000200") == "first run 200"
    assert (aside / "step_00000200" / TRAINER_FILE).is_file()
    assert "step_00000200" in caplog.text and aside.name in caplog.text


def test_resuming_the_newest_checkpoint_moves_nothing(tmp_path):
    run = tmp_path / "run"
    ck = Checkpointer(run, keep_last=2, keep_every=0, is_main=True)
    for step in (1, 2):
        ck.save(step, _writes(str(step)), {"step": step})
    assert ck.resolve(str(run / "checkpoints" / "step_00000002" / TRAINER_FILE)).name == "step_00000002"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]


# Saves step 8, then saves step 8 again and SIGKILLs itself at the chosen point of the second save:
# "replace" when the new copy is renamed into place, "delete" when the old copy is deleted.
_KILLED_RESAVE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from tests.test_checkpoint_branches import _writes
    from train.checkpoint import Checkpointer

    run, phase = Path(sys.argv[1]), sys.argv[2]
    ck = Checkpointer(run, keep_last=1, keep_every=0, is_main=True)
    ck.save(8, _writes("first"), {"step": 8})

    def kill_at(event, args):
        if phase == "replace" and event == "os.rename" and Path(args[0]).name.startswith(".tmp_step_"):
            os.kill(os.getpid(), signal.SIGKILL)
        if phase == "delete" and event == "shutil.rmtree" and not Path(args[0]).name.startswith(".tmp_step_"):
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(kill_at)
    ck.save(8, _writes("second"), {"step": 8})
    """
)


@pytest.mark.parametrize(("phase", "expected"), [("replace", "first"), ("delete", "second")])
def test_a_kill_while_resaving_a_step_leaves_that_step(tmp_path, phase, expected):
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-c", _KILLED_RESAVE, str(run), phase],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert r.returncode == -9, r.stderr[-3000:]  # killed where intended, not failed earlier
    ck = Checkpointer(run, keep_last=1, keep_every=0, is_main=True)
    found = ck.resolve("auto")
    assert found is not None and found.name == "step_00000008" and _tag(found) == expected
    ck.save(9, _writes("third"), {"step": 9})  # and the run goes on, leaving nothing behind
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000009"]


def test_resaving_a_step_replaces_it(tmp_path):
    run = tmp_path / "run"
    ck = Checkpointer(run, keep_last=1, keep_every=0, is_main=True)
    ck.save(8, _writes("first"), {"step": 8})
    ck.save(8, _writes("second"), {"step": 8})
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000008"]
    assert _tag(checkpoint_dirs(run)[-1]) == "second"


def _fairscale_run(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "train",
        *TINY_RUN,
        "strategy=fairscale",
        "data.num_workers=0",
        "optim.warmup_epochs=0",
        "optim.warmup_steps=1",
        f"run_dir={run_dir}",
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def test_fairscale_checkpoint_exports_initialises_and_resumes(tmp_path):
    import swinv2
    from train.export_cli import main as export

    run_dir = tmp_path / "fairscale"
    r = _fairscale_run(run_dir, "max_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    (newest,) = checkpoint_dirs(run_dir)
    saved = torch.load(newest / "fairscale.pt", map_location="cpu", weights_only=True)["model"]

    weights = read_model_weights(run_dir)  # what task.init_from=<run> reads
    assert weights.keys() == saved.keys()
    assert all(torch.equal(weights[k], saved[k]) for k in saved)

    out = tmp_path / "exported.safetensors"
    export([str(run_dir), str(out)])
    overrides = dict(o.removeprefix("model.").split("=") for o in TINY_MODEL)
    model = swinv2.build_model(
        "swinv2_tiny_window8_256",
        img_size=int(overrides["img_size"]),
        embed_dim=int(overrides["embed_dim"]),
        depths=(1, 1),
        num_heads=(1, 2),
        window_size=int(overrides["window_size"]),
        num_classes=10,
    )
    report = swinv2.load_pretrained(model, out)
    assert report.head == "loaded"
    assert torch.equal(model.state_dict()["head.weight"], saved["head.weight"])

    # Resuming reads fairscale.pt with weights_only=True: model, OSS optimizer and scaler state.
    r = _fairscale_run(run_dir, "max_steps=3", "resume=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_00000002", "step_00000003"]
