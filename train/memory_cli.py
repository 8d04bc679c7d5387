"""``swinv2-memory``: will this run fit on these GPUs, and if not, what are the cheapest settings that do?

    swinv2-memory --paper
    swinv2-memory --experiment simmim_swinv2_giant_192 --strategy deepspeed_zero1 --world-size 8 \\
        --img-size 1536 --window 32,32,32,16 --batch 1 --gpu-mem 40 --checkpoint 1,1,1,1 \\
        --attn sequential,sequential,sdpa,sdpa --chunk 16

The experiment (read through Hydra's compose API, like ``swinv2-train experiment=...``) supplies the
model, its overrides, the strategy, the precision and the micro batch (batch_size / world size /
accumulation); every flag given here overrides it. The model is built on the meta device, so even
SwinV2-G costs no memory. See ``train/memory.py`` for what is counted and why.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from train.memory import (
    DS_BUCKET_ELEMS,
    STRATEGIES,
    Estimate,
    GiB,
    ModelShape,
    Plan,
    estimate,
    model_shape,
    suggest,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# The paper's question (SWINV2.md, "Memory at scale"): SwinV2-G at 1536 px with window 32 on 8 x 40 GB
# A100s. The last stage's 48x48 map takes window 16 (32 does not divide it).
PAPER = dict(
    model="swinv2_giant", img_size=1536, window=[32, 32, 32, 16], world_size=8, gpu_mem=40.0, batch=1
)


def _gib(n: int) -> str:
    return f"{n / GiB:8.2f}"


def _flags(text: str, n: int, name: str) -> tuple[bool, ...]:
    vals = [v.strip().lower() for v in text.split(",")]
    vals = vals * n if len(vals) == 1 else vals
    if len(vals) != n or any(v not in ("0", "1", "true", "false") for v in vals):
        raise SystemExit(f"--{name} {text!r}: give one 0/1 per stage ({n}) or one for all")
    return tuple(v in ("1", "true") for v in vals)


def _impls(text: str, n: int) -> tuple[str, ...]:
    vals = [v.strip() for v in text.split(",")]
    vals = vals * n if len(vals) == 1 else vals
    if len(vals) != n:
        raise SystemExit(f"--attn {text!r}: give one of math|sdpa|sequential per stage ({n}) or one for all")
    return tuple(vals)


def load_experiment(name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Model name + overrides, precision, batch, and the strategy with its memory settings
    (checkpointing per stage, offload, DeepSpeed bucket sizes) of ``configs/experiment/NAME``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from train.config import RunConfig, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("config", overrides=[f"experiment={name}", *overrides])
    run: RunConfig = OmegaConf.to_object(cfg)
    zero = (run.strategy.deepspeed or {}).get("zero_optimization", {})
    return {
        "checkpoint": run.strategy.activation_checkpointing,
        "offload": run.strategy.cpu_offload or "offload_optimizer" in zero or "offload_param" in zero,
        "ds_bucket_elems": int(
            max(zero.get("reduce_bucket_size", DS_BUCKET_ELEMS), zero.get("allgather_bucket_size", 0))
        ),
        "model": run.model.name,
        "overrides": run.model.overrides(),
        "strategy": run.strategy.name,
        "precision": run.precision,
        "batch_size": run.batch_size,
        "accum_steps": run.optim.accum_steps,
    }


def format_estimate(shape: ModelShape, est: Estimate) -> str:
    p = est.plan
    lines = [
        f"{shape.name} at {shape.img_size[0]}x{shape.img_size[1]}: {shape.params / 1e9:.3f}B parameters; "
        f"{p.strategy}{' + offload' if p.offload else ''} on {p.world_size} GPU(s), micro batch {p.micro_batch}, "
        f"{p.precision}",
        "",
        "per-stage activations (GiB)   tokens  window  heads  blocks   saved  checkpointed  "
        "attn saved  attn transient",
    ]
    for st in est.stages:
        blk = next(b for b in shape.blocks if b.stage == st.stage)
        side = int(blk.window**0.5)
        lines.append(
            f"  stage {st.stage + 1}: {'ckpt' if p.checkpoint[st.stage] else '    '} {p.attn_impl[st.stage]:10s}"
            f"  {blk.tokens:8d}  {side:3d}x{side:<3d} {blk.heads:5d}  {st.blocks:6d}"
            f"{_gib(st.saved)}{_gib(st.checkpointed)}     {_gib(st.attn_saved)}    {_gib(st.attn_transient)}"
        )
    lines += ["", f"{'per GPU':40s}      GiB"]
    lines += [f"  {k:38s}{_gib(v)}" for k, v in est.rows.items()]
    lines.append(
        f"  {'total':38s}{_gib(est.total)}  of {est.gpu_bytes / GiB:.0f} GiB: "
        + ("fits" if est.fits else "DOES NOT FIT")
    )
    if est.cpu_bytes:
        lines.append(f"  {'CPU memory per rank (offloaded)':38s}{_gib(est.cpu_bytes)}")
    lines.append(f"  estimated step-time overhead vs a plain step: {100 * est.cost:.0f}%")
    lines += [f"  note: {n}" for n in est.notes]
    if p.chunk_windows and "sequential" in p.attn_impl:
        lines.append(f"  sequential attention: {p.chunk_windows} windows per chunk")
    return "\n".join(lines)


def format_suggestions(fitting: list[Estimate]) -> str:
    if not fitting:
        return "no plan fits: lower the micro batch or the resolution, or add GPUs"
    lines = [
        "cheapest settings that fit (cost = recomputed FLOPs of checkpointing and sequential attention as a",
        "fraction of a step, plus a fixed charge per strategy: ZeRO-1/2/fairscale move the bytes of DDP's",
        "all-reduce, ZeRO-3/FSDP gather parameters twice, offload adds PCIe copies and a CPU optimizer step):",
        f"  {'strategy':24s}{'checkpoint':12s}{'attention per stage':44s}{'chunk':>6s}{'GiB':>8s}{'overhead':>9s}",
    ]
    for e in fitting:
        p = e.plan
        chunk = str(p.chunk_windows) if "sequential" in p.attn_impl else "-"
        lines.append(
            f"  {p.strategy + (' + offload' if p.offload else ''):24s}"
            f"{','.join('1' if c else '0' for c in p.checkpoint):12s}{','.join(p.attn_impl):44s}"
            f"{chunk:>6s}{e.total / GiB:8.2f}{100 * e.cost:8.0f}%"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="swinv2-memory", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--paper", action="store_true", help="SwinV2-G, 1536 px, window 32, 8 x 40 GB (the paper's question)"
    )
    ap.add_argument("--experiment", help="configs/experiment/NAME.yaml (model, strategy, precision, batch)")
    ap.add_argument(
        "--override", action="append", default=[], help="Hydra override for --experiment (repeatable)"
    )
    ap.add_argument("--model", help="registered SwinV2 variant (overrides the experiment's)")
    ap.add_argument("--img-size", type=int)
    ap.add_argument("--window", help="window size, one or one per stage: 32,32,32,16")
    ap.add_argument("--strategy", choices=STRATEGIES)
    ap.add_argument("--world-size", type=int)
    ap.add_argument("--batch", type=int, help="micro batch per GPU")
    ap.add_argument("--precision", choices=("fp32", "bf16"))
    ap.add_argument("--gpu-mem", type=float, help="GiB per GPU (default 40)")
    ap.add_argument(
        "--checkpoint", help="activation checkpointing per stage: 1,1,1,0 (or one for all; default: none)"
    )
    ap.add_argument(
        "--attn", help="attention per stage: sequential,sequential,sdpa,sdpa (default: the model's)"
    )
    ap.add_argument("--chunk", type=int, help="windows per chunk of sequential attention")
    ap.add_argument(
        "--offload", action="store_true", help="optimizer (ZeRO-3/FSDP: also parameters) on the CPU"
    )
    ap.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: sdpa runs the math kernel (CPU runs)"
    )
    ap.add_argument("--frag", type=float, default=0.10, help="fragmentation margin, fraction of activations")
    ap.add_argument("--reserve-gb", type=float, default=1.5, help="CUDA context + workspaces + NCCL, GiB")
    ap.add_argument("--suggest", type=int, default=5, help="how many fitting plans to list (0: none)")
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    exp: dict[str, Any] = {"overrides": {}}
    if args.experiment:
        exp = load_experiment(args.experiment, args.override)
    if args.paper:
        exp.update(model=PAPER["model"], strategy=exp.get("strategy", "deepspeed_zero1"))
        exp["overrides"] = {**exp["overrides"], "img_size": PAPER["img_size"], "window_size": PAPER["window"]}
    model = args.model or exp.get("model")
    if not model:
        raise SystemExit("give --model NAME, --experiment NAME or --paper")
    overrides = dict(exp["overrides"])
    if args.img_size:
        overrides["img_size"] = args.img_size
    if args.window:
        sizes = [int(v) for v in args.window.split(",")]
        overrides["window_size"] = sizes[0] if len(sizes) == 1 else sizes
    model_attn = overrides.pop("attn_impl", None) or "sdpa"
    chunk = overrides.pop("chunk_windows", None) or 16
    try:
        shape = model_shape(model, **overrides)
    except ValueError as err:
        raise SystemExit(f"model {model}: {err}") from None
    n = shape.num_stages

    world = args.world_size or (PAPER["world_size"] if args.paper else 1)
    strategy = args.strategy or exp.get("strategy") or ("single" if world == 1 else "ddp")
    if strategy == "single" and world > 1:
        strategy = "ddp"
    if args.batch:
        batch = args.batch
    elif args.paper:
        batch = PAPER["batch"]
    elif "batch_size" in exp:
        batch = max(1, exp["batch_size"] // (world * exp["accum_steps"]))
    else:
        batch = 1
    attn = args.attn or (model_attn if isinstance(model_attn, str) else ",".join(model_attn))
    checkpoint = tuple(bool(c) for c in exp.get("checkpoint") or [False] * n)
    plan = Plan(
        strategy=strategy,
        world_size=world,
        micro_batch=batch,
        precision=args.precision or exp.get("precision", "bf16"),
        checkpoint=_flags(args.checkpoint, n, "checkpoint") if args.checkpoint else checkpoint,
        attn_impl=_impls(attn, n),
        chunk_windows=args.chunk or chunk,
        offload=args.offload or bool(exp.get("offload")),
        device=args.device,
        ds_bucket_elems=exp.get("ds_bucket_elems", DS_BUCKET_ELEMS),
    )
    gpu = args.gpu_mem or PAPER["gpu_mem"]
    try:
        est = estimate(shape, plan, gpu_gib=gpu, frag=args.frag, reserve_gib=args.reserve_gb)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(format_estimate(shape, est))
    if args.paper and not args.attn and not args.checkpoint:
        paper = replace(
            plan, checkpoint=(True,) * n, attn_impl=("sequential", "sequential") + ("sdpa",) * (n - 2)
        )
        print(
            "\nthe paper's settings: ZeRO-1, checkpointing everywhere, sequential attention in stages 1-2\n"
        )
        print(
            format_estimate(
                shape, estimate(shape, paper, gpu_gib=gpu, frag=args.frag, reserve_gib=args.reserve_gb)
            )
        )
    if args.suggest:
        print()
        print(
            format_suggestions(
                suggest(
                    shape, plan, gpu_gib=gpu, limit=args.suggest, frag=args.frag, reserve_gib=args.reserve_gb
                )
            )
        )
