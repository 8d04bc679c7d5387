"""The trainer: every task end to end through the real entry point, accumulation, precision,
the non-finite guard, and the one-line errors of bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.__main__ import CONFIG_DIR
from train.config import ConfigError, RunConfig, register_configs, validate
from train.distributed import DistEnv
from train.trainer import Trainer, TrainingDiverged

FASHION = "/usr/share/datasets/fashion-mnist"
TINY = [
    "data=fashion_mnist",
    "data.num_workers=0",
    "model.img_size=32",
    "model.embed_dim=16",
    "model.depths=[1,1]",
    "model.num_heads=[1,2]",
    "model.window_size=4",
    "model.drop_path_rate=0.0",
    "data.mask.mask_patch_size=8",
    "data.aug.rand_augment=null",
    "data.aug.color_jitter=null",
    "data.aug.reprob=0",
    "data.aug.mixup=0",
    "data.aug.cutmix=0",
    "optim.warmup_epochs=0",
    "optim.warmup_steps=2",
    "optim.scale_lr=false",
    "optim.base_lr=2e-3",
    "wandb.mode=offline",
    "log_every=2",
]
pytestmark = pytest.mark.skipif(not Path(FASHION).is_dir(), reason="needs apt package dataset-fashion-mnist")


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "train", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def make_cfg(*overrides: str) -> RunConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        raw = compose(config_name="config", overrides=[*TINY, *overrides])
    return OmegaConf.to_object(raw)


CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_simmim_then_finetune_then_eval_through_the_entry_point(tmp_path):
    simmim = tmp_path / "simmim"
    r = run_cli(
        *TINY,
        "task=simmim",
        "task.vis_every=10",
        "task.norm_target_window=7",
        "batch_size=32",
        "max_steps=20",
        f"run_dir={simmim}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    curve = losses(simmim)
    assert sum(curve[-3:]) < sum(curve[:3]), curve
    assert (simmim / "vis" / "step_00000020.png").is_file()
    assert (simmim / "config.yaml").is_file()
    assert list((simmim / "wandb").glob("offline-run-*")), "W&B offline run missing"

    finetune = tmp_path / "finetune"
    r = run_cli(
        *TINY,
        "task=finetune",
        f"task.init_from={simmim}",
        "batch_size=32",
        "max_steps=30",
        "epochs=1",
        f"run_dir={finetune}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "initialised from" in r.stderr and "simmim" in r.stderr
    curve = losses(finetune)
    assert sum(curve[-3:]) < sum(curve[:3]), curve
    result = json.loads((finetune / "result_finetune.json").read_text())
    assert result["best_top1"] > 15  # 10 balanced classes: chance is 10%
    assert "best top-1" in r.stderr

    evaluation = tmp_path / "eval"
    r = run_cli(
        *TINY,
        "task=eval",
        f"task.init_from={finetune}",
        "batch_size=250",
        f"run_dir={evaluation}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((evaluation / "result_eval.json").read_text())
    assert metrics["samples"] == 10000
    # the same weights on the same 10k test images: the fine-tune's own evaluation
    assert metrics["top1"] == pytest.approx(result["best_top1"], abs=1e-6)


def _one_step(
    cfg: RunConfig, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """Weights after one optimizer step on ``batches`` (the micro-batches of that step), the
    gradients the optimizer was handed for it (captured just before it stepped), and its LR."""
    trainer = Trainer(cfg, CPU, {})
    trainer.setup()
    names = {id(p): n for n, p in trainer.strategy.module.named_parameters()}
    grads: dict[str, torch.Tensor] = {}

    def capture(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads[names[id(p)]] = p.grad.detach().clone()

    trainer.strategy.optimizer.register_step_pre_hook(capture)
    lr = max(group["lr"] for group in trainer.strategy.optimizer.param_groups)
    if batches:
        trainer._train_step(iter(batches))
    weights = {k: v.clone() for k, v in trainer.strategy.module.state_dict().items()}
    return weights, grads, lr


def test_accumulating_two_halves_equals_one_full_batch(tmp_path):
    torch.manual_seed(0)
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    # no warmup: the step runs at the base LR, so it moves weights by ~1e-3 (Adam's first step is
    # ~lr * sign(g)), far above the weight tolerance below
    common = (
        "max_steps=1",
        "wandb.enabled=false",
        "data.aug.label_smoothing=0",
        "optim.clip_grad=null",
        "optim.warmup_steps=0",
    )
    full, full_grads, lr = _one_step(
        make_cfg(*common, "batch_size=16", f"run_dir={tmp_path / 'a'}"), [(images, labels)]
    )
    assert lr == pytest.approx(2e-3)
    halves = [(images[:8], labels[:8]), (images[8:], labels[8:])]
    accum, accum_grads, _ = _one_step(
        make_cfg(*common, "batch_size=16", "optim.accum_steps=2", f"run_dir={tmp_path / 'b'}"), halves
    )
    # The gradients themselves (Adam's first step hides their scale, e.g. a missing / accum_steps):
    # the two halves' accumulated gradient is the full batch's mean gradient.
    assert full_grads.keys() == accum_grads.keys() and len(full_grads) > 10
    assert full_grads["head.weight"].abs().max() > 1e-2
    assert full_grads["patch_embed.proj.weight"].abs().max() > 1e-3
    for name, grad in full_grads.items():
        torch.testing.assert_close(accum_grads[name], grad, atol=1e-8, rtol=1e-5, msg=name)
    for name, value in full.items():
        torch.testing.assert_close(accum[name], value, atol=1e-6, rtol=1e-5, msg=name)
    initial, _, _ = _one_step(make_cfg(*common, "batch_size=16", f"run_dir={tmp_path / 'c'}"), [])
    # zero-initialised post-norms: at step 1 only the norms, patch embedding, merging and head move,
    # each by about the LR (far above the 1e-6 tolerance above)
    for name in ("head.weight", "layers.0.blocks.0.norm1.weight", "patch_embed.proj.weight"):
        change = (full[name] - initial[name]).abs().max().item()
        assert change > 0.5 * lr, (name, change)


def test_bf16_autocast_step_on_cpu(tmp_path):
    cfg = make_cfg("precision=bf16", "batch_size=8", "wandb.enabled=false", f"run_dir={tmp_path}")
    trainer = Trainer(cfg, CPU, {})
    trainer.setup()
    loss, _, _ = trainer._train_step(iter([(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]))
    assert torch.isfinite(torch.tensor(loss)) and trainer.state.nonfinite_total == 0


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path):
    cfg = make_cfg("batch_size=8", "optim.max_nonfinite=3", "wandb.enabled=false", f"run_dir={tmp_path}")
    trainer = Trainer(cfg, CPU, {})
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.strategy.module.state_dict().items()}
    bad = (torch.full((8, 3, 32, 32), float("nan")), torch.zeros(8, dtype=torch.long))
    for _ in range(2):
        trainer._train_step(iter([bad]))
    assert trainer.state.nonfinite_streak == 2
    for name, value in trainer.strategy.module.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a skipped step"
    good = (torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    trainer._train_step(iter([good]))
    assert trainer.state.nonfinite_streak == 0 and trainer.state.nonfinite_total == 2
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        for _ in range(3):
            trainer._train_step(iter([bad]))


@pytest.mark.parametrize(
    "overrides, world, message",
    [
        (["model.window_size=3"], 1, "does not divide"),
        (["model.name=swinv2_tiny_window7_224"], 1, "model.name='swinv2_tiny_window7_224' is unknown"),
        (["batch_size=30"], 4, "batch_size=30 does not divide by world size 4"),
        (["data.train_path=/nonexistent/fmnist"], 1, "data.train_path='/nonexistent/fmnist' does not exist"),
        (
            ["task.init_from=/nonexistent/ckpt.pth"],
            1,
            "task.init_from='/nonexistent/ckpt.pth' does not exist",
        ),
        (["task=simmim", "data.mask.mask_patch_size=12"], 1, "data.mask.mask_patch_size=12"),
        (["precision=fp16", "device=cpu"], 1, "precision=fp16 needs a GPU"),
        (
            ["optim.schedule=linear"],
            1,
            "optim.schedule='linear' is not valid; choose one of cosine, multistep",
        ),
    ],
)
def test_bad_config_is_one_clear_error(overrides, world, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate(make_cfg(*overrides), world)


def test_bad_config_exits_with_one_line_and_no_traceback(tmp_path):
    r = run_cli(*TINY, "model.window_size=3", f"run_dir={tmp_path / 'x'}", cwd=tmp_path)
    assert r.returncode == 2
    assert "config error: model" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*TINY, "optim.no_such_key=1", cwd=tmp_path)
    assert r.returncode != 0 and "no_such_key" in r.stderr and "Traceback" not in r.stderr
