"""Benchmarks of the parallelism strategies: figures for the README, never part of the test suite.

Parts:
  cpu    (default) step time and peak memory per strategy for SwinV2-B (88M parameters) on 2 CPU
         ranks (gloo), through the real Trainer: ddp, fsdp, fairscale, deepspeed_zero1/2/3. Small
         images (64 px) and batch 2 per rank so it finishes in minutes; the figures compare
         strategies, they are not SwinV2-B's real throughput.
  mfu    (cuda) SwinV2-B at 256 px, bf16, one GPU: images/s and model FLOPs utilisation, eager and
         with per-block torch.compile.
  giant  (cuda) the largest SwinV2-G (3.0B) resolution whose training step fits one GPU with
         FSDP2 CPU offload (or ZeRO-3 param+optimizer offload), activation checkpointing in every
         stage and sequential attention in the first two; each resolution in a fresh process.

Commands:
  python bench/bench_strategies.py                       # the CPU table (about 5 minutes)
  python bench/bench_strategies.py --strategies ddp,fsdp --steps 3
  python bench/bench_strategies.py --device cuda         # mfu + giant on one GPU
  python bench/bench_strategies.py --device cuda --parts giant --giant-strategy deepspeed_zero3_offload

Memory on CPU: each rank resets its resident high-water mark (``/proc/self/clear_refs``) just
before ``Trainer.setup`` and reports VmHWM minus the resident size at that point: the model,
gradients, optimizer state, communication buffers and activations this strategy needs. On CUDA:
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.__main__ import CONFIG_DIR
from train.config import RunConfig, register_configs, validate
from train.distributed import DistEnv, free_port, init_distributed, set_local_rank_env
from train.trainer import Trainer

CPU_STRATEGIES = ("ddp", "fsdp", "fairscale", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3")
BASE = ["model=swinv2_base_window8_256", "task=finetune", "data=synthetic", "data.num_workers=0"]
COMMON = [
    "data.aug.mixup=0",
    "data.aug.cutmix=0",
    "optim.warmup_steps=1",
    "wandb.enabled=false",
    "run_dir=/tmp/bench_strategies",
]
H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM (and H200)
MIB = 2**20


def make_cfg(overrides: list[str]) -> RunConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        raw = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_object(raw)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def timed_steps(trainer: Trainer, steps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per optimizer step (after ``warmup`` untimed steps) on fixed random batches."""
    size, micro = trainer._img_size(), trainer.micro_batch
    images = torch.randn(micro, 3, size, size, device=device)
    labels = torch.randint(0, trainer.cfg.data.num_classes, (micro,), device=device)
    times = []
    for i in range(warmup + steps):
        batches = iter([(images, labels)] * trainer.cfg.optim.accum_steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer._train_step(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


# ------------------------------------------------------------------------------------------ cpu
def _cpu_worker(rank: int, world: int, port: int, overrides: list[str], steps: int, out: str) -> None:
    set_local_rank_env(rank, world, port)
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    try:
        env = init_distributed("cpu")
        cfg = make_cfg(overrides)
        validate(cfg, world)
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kb("VmRSS")
        trainer = Trainer(cfg, env, {})
        trainer.setup()
        result["times"] = timed_steps(trainer, steps, warmup=2, device=env.device)
        result["peak_mib"] = (_status_kb("VmHWM") - before) / 1024
    except Exception:
        result["error"] = traceback.format_exc()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    os._exit(0)  # gloo may abort at interpreter exit after all work is done


def bench_cpu(args: argparse.Namespace) -> None:
    world, per_rank = 2, args.batch
    overrides = [*BASE, *COMMON, f"model.img_size={args.img}", f"batch_size={world * per_rank}"]
    print(
        f"SwinV2-B (88M params), {args.img} px, batch {per_rank} per rank, {world} CPU ranks (gloo, 1 thread each), "
        f"fp32, median of {args.steps} steps after 2 warm-up"
    )
    print(f"{'strategy':<18}{'step s':>9}{'img/s':>8}{'peak MiB/rank':>15}{'vs ddp':>8}")
    ddp_peak = None
    for name in args.strategies.split(","):
        with tempfile.TemporaryDirectory() as out:
            mp.spawn(
                _cpu_worker,
                args=(world, free_port(), [*overrides, f"strategy={name}"], args.steps, out),
                nprocs=world,
                join=True,
            )
            results = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
        if any("error" in r for r in results):
            print(f"{name:<18}failed:\n{next(r['error'] for r in results if 'error' in r)}")
            continue
        step = statistics.median(max(ts) for ts in zip(*(r["times"] for r in results)))
        peak = max(r["peak_mib"] for r in results)
        ddp_peak = peak if name == "ddp" else ddp_peak
        ratio = f"{peak / ddp_peak:.2f}" if ddp_peak else "-"
        print(f"{name:<18}{step:>9.2f}{world * per_rank / step:>8.1f}{peak:>15.0f}{ratio:>8}", flush=True)


# ------------------------------------------------------------------------------------------ cuda
def bench_mfu(args: argparse.Namespace) -> None:
    """SwinV2-B at 256 px in bf16 on one GPU (strategy single), eager and compiled per block."""
    from torch.utils.flop_counter import FlopCounterMode

    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
    torch.cuda.set_device(0)
    print(f"SwinV2-B 256 px, bf16 autocast, batch {args.gpu_batch}, {torch.cuda.get_device_name()}")
    print(f"{'compile':<9}{'img/s':>9}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}")
    for compiled in (False, True):
        cfg = make_cfg(
            [
                *BASE,
                *COMMON,
                "precision=bf16",
                "device=cuda",
                f"batch_size={args.gpu_batch}",
                f"strategy.compile={str(compiled).lower()}",
            ]
        )
        trainer = Trainer(cfg, env, {})
        trainer.setup()
        if not compiled:  # counted on the eager model: inductor's kernels are invisible to the counter
            x = torch.randn(args.gpu_batch, 3, 256, 256, device=env.device)
            y = torch.zeros(args.gpu_batch, dtype=torch.long, device=x.device)
            with FlopCounterMode(display=False) as counter, trainer.autocast():
                trainer.task.loss(trainer.strategy.model, x, y).backward()
            train_flops = counter.get_total_flops()  # forward + backward of one batch
            trainer.strategy.optimizer.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        times = timed_steps(trainer, args.steps, warmup=3, device=env.device)
        step = statistics.median(times)
        flops = train_flops / step
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(
            f"{str(compiled):<9}{args.gpu_batch / step:>9.0f}{flops / 1e12:>9.0f}{flops / H100_BF16_FLOPS:>7.1%}{peak:>10.1f}",
            flush=True,
        )
        del trainer
        torch.cuda.empty_cache()


def giant_overrides(img: int, strategy: str) -> list[str]:
    """SwinV2-G at ``img`` = 48k px, batch 1, bf16, one GPU with offload, checkpointing in every
    stage and sequential attention in stages 1-2. Windows (k, k, k, 3k/4) tile every stage: at 1536 px
    the paper's 32, and 24 on the last stage's 48x48 map."""
    k = img // 48
    strat = (
        ["strategy=fsdp", "strategy.cpu_offload=true"]
        if strategy == "fsdp_offload"
        else [f"strategy={strategy}"]
    )
    return [
        "model=swinv2_giant",
        "task=finetune",
        "data=synthetic",
        "data.num_workers=0",
        *COMMON,
        *strat,
        f"model.img_size={img}",
        f"model.window_size=[{k},{k},{k},{3 * k // 4}]",
        "model.attn_impl=[sequential,sequential,sdpa,sdpa]",
        "model.chunk_windows=4",
        "strategy.activation_checkpointing=[true,true,true,true]",
        "precision=bf16",
        "device=cuda",
        "batch_size=1",
    ]


def _giant_probe(img: int, strategy: str) -> None:
    """One process, one resolution: print a JSON line with the step time and peak memory, or OOM."""
    env = init_distributed("cuda")
    cfg = make_cfg(giant_overrides(img, strategy))
    validate(cfg, env.world_size)
    try:
        trainer = Trainer(cfg, env, {})
        trainer.setup()
        torch.cuda.reset_peak_memory_stats()
        times = timed_steps(trainer, steps=2, warmup=1, device=env.device)
        print(
            json.dumps(
                {
                    "img": img,
                    "ok": True,
                    "step_s": min(times),
                    "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                }
            )
        )
    except torch.OutOfMemoryError:
        print(json.dumps({"img": img, "ok": False}))
    sys.stdout.flush()
    os._exit(0)


def bench_giant(args: argparse.Namespace) -> None:
    print(
        f"SwinV2-G (3.0B), batch 1, bf16, {args.giant_strategy}, checkpointing + sequential attention (stages 1-2)"
    )
    print(f"{'img':>6}{'window':>8}{'fits':>6}{'step s':>8}{'peak GiB':>10}")
    largest = None
    for img in args.giant_sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--giant-probe", str(img), "--giant-strategy", args.giant_strategy],
            capture_output=True,
            text=True,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        r = json.loads(lines[-1]) if lines else {"img": img, "ok": False}
        if r["ok"]:
            largest = img
            print(f"{img:>6}{img // 48:>8}{'yes':>6}{r['step_s']:>8.1f}{r['peak_gib']:>10.1f}", flush=True)
        else:
            print(f"{img:>6}{img // 48:>8}{'no':>6}", flush=True)
            break
    print(f"largest resolution that trains on one GPU: {largest}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--parts", default=None, help="cpu | mfu,giant (default: cpu on cpu, mfu,giant on cuda)")
    p.add_argument("--strategies", default=",".join(CPU_STRATEGIES))
    p.add_argument("--img", type=int, default=64, help="CPU part: image size")
    p.add_argument("--batch", type=int, default=2, help="CPU part: images per rank")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--gpu-batch", type=int, default=64, help="mfu part: batch size")
    p.add_argument(
        "--giant-strategy", default="fsdp_offload", choices=("fsdp_offload", "deepspeed_zero3_offload")
    )
    p.add_argument(
        "--giant-sizes", type=int, nargs="+", default=[768, 960, 1152, 1344, 1536], help="multiples of 192"
    )
    p.add_argument("--giant-probe", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.giant_probe is not None:
        _giant_probe(args.giant_probe, args.giant_strategy)
    parts = (args.parts or ("cpu" if args.device == "cpu" else "mfu,giant")).split(",")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU visible")
    if "cpu" in parts:
        bench_cpu(args)
    if "mfu" in parts:
        bench_mfu(args)
    if "giant" in parts:
        bench_giant(args)


if __name__ == "__main__":
    main()
