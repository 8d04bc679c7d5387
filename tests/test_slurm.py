"""The Slurm requeue cycle for real, on a one-node cluster that slurm/local_cluster.sh starts here.

slurm/train.sbatch runs 2 CPU ranks of a tiny run. Once it has saved a checkpoint, Slurm stops it
as before a time limit (SIGUSR1 to the batch shell, which forwards it and requeues the job) or as a
preemption (`scontrol requeue`: SIGTERM to everything, Slurm requeues). The ranks save and exit 75,
and the requeued job resumes from that checkpoint and finishes. Its final model and optimizer
tensors, last logged loss and result must equal those of the same run done uninterrupted with
launch/single_node.sh.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import TINY_DDP_RUN, assert_bitwise_equal, newest_state
from train.checkpoint import checkpoint_dirs

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "slurm" / "local_cluster.sh"
# The tiny run of tests/test_launch.py: start-up dominates; 40 steps take about 10 s on 2 cores.
RUN = [
    *TINY_DDP_RUN,
    "max_steps=40",
    "checkpoint.every_steps=2",
]

pytestmark = pytest.mark.slow


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (slurmctld, slurmd), away from the jobs' MASTER_PORTs."""
    for _ in range(100):
        port = random.randrange(30000, 40000)
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    if os.geteuid() != 0 and not shutil.which("slurmd"):
        pytest.skip("Slurm is not installed and installing it needs root")
    env = {
        **os.environ,
        "SWINV2_SLURM_DIR": str(tmp_path_factory.mktemp("slurm")),
        "SWINV2_SLURM_PORT": str(_free_port_pair()),
    }
    up = subprocess.run([str(CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        if not (shutil.which("slurmctld") and shutil.which("sbatch")):
            pytest.skip(f"Slurm could not be installed (apt-get): {up.stderr.strip()[-500:]}")
        if os.geteuid() != 0:
            pytest.skip(f"a local Slurm cluster needs root: {up.stderr.strip()[-300:]}")
        pytest.fail(f"slurm/local_cluster.sh up failed:\n{up.stdout}\n{up.stderr}")
    conf = re.search(r"^export SLURM_CONF=(\S+)$", up.stdout, re.M)
    assert conf, up.stdout
    env["SLURM_CONF"] = conf.group(1)
    try:
        yield env
    finally:
        subprocess.run([str(CLUSTER), "down"], env=env, capture_output=True, timeout=120)


def _job(job_id: str, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _final_state(run_dir: Path) -> tuple[str, dict]:
    """The newest checkpoint's name and its model and optimizer tensors."""
    return checkpoint_dirs(run_dir)[-1].name, newest_state(run_dir)


def _last_loss(run_dir: Path) -> tuple[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "train/loss" in r][-1]
    return last["step"], last["train/loss"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, outside Slurm with launch/single_node.sh; started at once and waited
    for only when compared, so that it shares the 2 cores with the first Slurm job."""
    ref_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.Popen(
        [str(REPO / "launch" / "single_node.sh"), *RUN, f"run_dir={ref_dir}"],
        env={**os.environ, "PYTHON": sys.executable, "WANDB_SILENT": "true", "NPROC": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def finished() -> Path:
        if proc.returncode is None:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out[-4000:]
        return ref_dir

    try:
        yield finished
    finally:
        if proc.poll() is None:
            proc.kill()


# How Slurm stops a job early, and what the batch script must do about it:
# - USR1 to the batch shell (`#SBATCH --signal=B:USR1@120` before the time limit): the script
#   forwards it, and requeues the job itself. Ranks started by srun (the default launcher).
# - `scontrol requeue` (like preemption with PreemptMode=REQUEUE): SIGTERM to every process, and
#   Slurm requeues the job. One torchrun per node (LAUNCHER=torchrun). W&B stays on: its
#   wandb-core process, a child of rank 0, gets that SIGTERM too and exits; the trainer must
#   still save at the stopping step (its W&B calls are best-effort).
CASES = {
    "usr1-srun": (["scancel", "--signal=USR1", "--batch"], "srun", "[slurm] preempted: requeueing job", []),
    "requeue-torchrun": (
        ["scontrol", "requeue"],
        "torchrun",
        "[slurm] stopped by SIGTERM",
        [],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stopped_job_requeues_resumes_and_equals_uninterrupted(
    case: str, slurm_env, reference, tmp_path: Path
) -> None:
    stop, launcher, script_says, extra = CASES[case]
    env = {**slurm_env, "PYTHON": sys.executable, "WANDB_SILENT": "true", "RUN_ROOT": str(tmp_path)}
    sbatch = ["sbatch", "--parsable", "--job-name=swinv2-test", "--ntasks=2", "--cpus-per-task=1"]
    submitted = subprocess.run(
        [*sbatch, f"--output={tmp_path}/%x-%j.out", "slurm/train.sbatch", *RUN, *extra],
        cwd=REPO,
        env={**env, "LAUNCHER": launcher},
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    run_dir = tmp_path / f"swinv2-test-{job_id}"
    log = tmp_path / f"swinv2-test-{job_id}.out"

    # Stop the job once its first checkpoint is there.
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("step_*")):
        state = _job(job_id, env)["JobState"]
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {state}:\n{log.read_text()}"
        assert time.monotonic() < deadline, "the job saved no checkpoint in 120 s"
        time.sleep(0.3)
    subprocess.run([*stop, job_id], env=env, check=True)

    deadline = time.monotonic() + 150
    while (job := _job(job_id, env))["JobState"] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline, f"job still {job['JobState']}:\n{log.read_text()}"
        time.sleep(0.5)
    text = log.read_text()
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", text
    assert job["Restarts"] == "1", text
    # The ranks saved and exited 75 (the step's status can differ: torchrun reports 1, and srun's
    # --kill-on-bad-exit may SIGTERM a rank still tearing down after the first one exited 75).
    assert re.search(r"preempted at step \d+: checkpoint saved, exiting 75", text), text
    assert script_says in text, text
    assert f"[slurm] job {job_id} (swinv2-test) restart 1: 1 node(s), 2 task(s), head" in text, text
    assert f"launcher {launcher}" in text, text
    resumed = re.findall(r"resumed from \S+/step_(\d+) at step (\d+)", text)
    assert len(resumed) == 1 and 0 < int(resumed[0][1]) < 40, text
    assert "[slurm] finished" in text, text

    ref_dir = reference()
    assert json.loads((run_dir / "result_finetune.json").read_text())["step"] == 40
    assert _last_loss(run_dir) == _last_loss(ref_dir)
    name, state = _final_state(run_dir)
    ref_name, ref_state = _final_state(ref_dir)
    assert name == ref_name == "step_00000040"
    assert_bitwise_equal(state, ref_state)
