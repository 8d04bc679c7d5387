"""launch/single_node.sh for real: torchrun with 2 CPU workers (gloo) on a tiny synthetic run, and
a worker killed with SIGKILL mid-run: torchrun restarts the group, which continues from the last
checkpoint (the script adds resume=auto) and finishes the run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import TINY_DDP_RUN

REPO = Path(__file__).resolve().parent.parent
SINGLE_NODE = REPO / "launch" / "single_node.sh"
TINY = TINY_DDP_RUN  # a few MFLOPs per step: start-up (imports, process group) dominates


def launch_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "WANDB_SILENT": "true", "NPROC": "2", **extra}


def test_single_node_two_workers_finish(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [str(SINGLE_NODE), *TINY, "max_steps=4", f"run_dir={run_dir}"],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert json.loads((run_dir / "result_finetune.json").read_text())["step"] == 4


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
def test_killed_worker_restarts_group_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [str(SINGLE_NODE), *TINY, "max_steps=40", "checkpoint.every_steps=2", f"run_dir={run_dir}"],
        env=launch_env(MAX_RESTARTS="1", SHUTDOWN_TIMEOUT="10"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((run_dir / "checkpoints").glob("step_*")):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)
        workers = _children(proc.pid)  # the script execs torchrun, whose children are the workers
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-12000:]
    resumed = re.findall(r"resumed from \S+step_(\d+) at step (\d+)", output)
    assert resumed and int(resumed[-1][1]) > 0, output[-4000:]
    assert json.loads((run_dir / "result_finetune.json").read_text())["step"] == 40
