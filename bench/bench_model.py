"""Benchmarks of the SwinV2 model library: figures for the README, never part of the test suite.

Parts (``--parts``, comma separated):
  train  training step (forward, backward, AdamW step) of SwinV2-T at 256 against timm's
         ``swinv2_tiny_window8_256``, eager and with ``torch.compile``; sides alternate in one
         process so that load from other jobs hits both alike, and medians are reported.
  profile  torch.profiler over two training steps of each side of ``train``: the seconds spent in
         matrix multiplies (mm, addmm, bmm) against the whole step, which bounds any speed-up.
  block  peak memory and time of one SwinV2-G stage-1 block (C=512, 16 heads, window 32,
         shifted) forward+backward at 768x768 px (192x192 tokens, batch 1) for the ``math``,
         ``sdpa`` and ``sequential`` kernels, for the whole block and for its attention alone.
  giant  (cuda only) one SwinV2-G (3.0B) training step at 1536x1536, batch 1, with activation
         checkpointing around every block and sequential attention in the first two stages.

Commands:
  python bench/bench_model.py                 # train (eager + compiled) and block, CPU fp32
  python bench/bench_model.py --quick         # a few minutes: batch 8, 512 px block, no compile
  python bench/bench_model.py --parts block --chunk-windows 4
  python bench/bench_model.py --device cuda   # the same in bf16 autocast on a GPU, plus giant

Memory on CPU: every kernel runs in a fresh subprocess with glibc's mmap threshold fixed at
64 KiB, so every tensor buffer is its own mapping and is returned to the OS when freed; the peak
is the process's resident high-water mark (VmHWM) during one forward+backward minus its resident
size just before it. On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated
before the measured call.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import swinv2
from swinv2.model import SwinTransformerV2Block

TINY = "swinv2_tiny_window8_256"
IMPLS = ("math", "sdpa", "sequential")
GIB = 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """bf16 autocast on the GPU; plain fp32 on the CPU (this CPU has no fast bf16)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(sides: dict[str, Callable[[], None]], iters: int, device: torch.device) -> dict[str, list[float]]:
    """Run every side once per round, ``iters`` rounds; returns the seconds of each call."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(iters):
        for name, fn in sides.items():
            times[name].append(timed(fn, device))
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------------------------------------
# train: SwinV2-T training step, ours vs timm
# ---------------------------------------------------------------------------------------------


def make_train_step(
    model: torch.nn.Module, device: torch.device, *, batch: int, img: int = 256, fused: bool = False
) -> Callable[[], None]:
    x = torch.randn(batch, 3, img, img, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

    def step() -> None:
        with autocast(device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def report_steps(times: dict[str, list[float]], batch: int, baseline: str) -> None:
    for name, ts in times.items():
        m = median(ts)
        print(f"  {name:<16} {m:8.3f} s/step  {batch / m:7.2f} img/s   (runs: {', '.join(f'{t:.2f}' for t in ts)})")
    base = times[baseline]
    for name, ts in times.items():
        if name == baseline:
            continue
        paired = median([b / t for b, t in zip(base, ts)])
        print(f"  speed-up {name} vs {baseline}: {median(base) / median(ts):.2f}x  (median of per-round ratios {paired:.2f}x)")


def bench_train(args: argparse.Namespace, device: torch.device) -> None:
    import timm

    torch.manual_seed(0)
    # Same stochastic depth on both sides (timm's default for this model).
    ours = swinv2.build_model(TINY, drop_path_rate=0.1, attn_impl=args.attn_impl).to(device)
    theirs = timm.create_model(TINY, drop_path_rate=0.1).to(device)
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(
        f"\n[train] SwinV2-T 256 ({args.attn_impl}), batch {args.batch}, {precision}, {device.type}, "
        f"{torch.get_num_threads()} threads; median of {args.iters} alternating steps after 1 warm-up"
    )
    sides = {
        "ours eager": make_train_step(ours, device, batch=args.batch),
        "timm eager": make_train_step(theirs, device, batch=args.batch),
    }
    warm = {name: [timed(step, device)] for name, step in sides.items()}
    to_compile = {"none": [], "ours": ["ours"], "both": ["ours", "timm"]}[args.compile]
    for name in to_compile:
        step = make_train_step(torch.compile(ours if name == "ours" else theirs), device, batch=args.batch)
        # Two warm-up steps: the backward graph compiles lazily during the first backward.
        warm[f"{name} compiled"] = [timed(step, device), timed(step, device)]
        sides[f"{name} compiled"] = step
    times = alternate(sides, args.iters, device)
    report_steps(times, args.batch, "timm eager")
    for name in to_compile:
        steady = median(times[f"{name} compiled"])
        print(f"  compile time {name}: {sum(warm[f'{name} compiled']) - 2 * steady:.1f} s (first two steps minus two steady steps)")
    if len(to_compile) == 2:
        report_steps({k: times[k] for k in ("timm compiled", "ours compiled")}, args.batch, "timm compiled")


def bench_profile(args: argparse.Namespace, device: torch.device) -> None:
    import timm
    from torch.profiler import profile

    torch.manual_seed(0)
    models = {
        "ours": swinv2.build_model(TINY, drop_path_rate=0.1, attn_impl=args.attn_impl).to(device),
        "timm": timm.create_model(TINY, drop_path_rate=0.1).to(device),
    }
    print(f"\n[profile] SwinV2-T 256, batch {args.batch}, two training steps per side under torch.profiler")
    matmul_s = {}
    for name, model in models.items():
        step = make_train_step(model, device, batch=args.batch)
        step()  # warm-up
        with profile() as prof:
            step()
            step()
        ops = {e.key: e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total for e in prof.key_averages()}
        total = sum(ops.values()) / 1e6
        matmul_s[name] = sum(ops.get(k, 0) for k in ("aten::mm", "aten::addmm", "aten::bmm")) / 1e6
        print(f"  {name}: {total:6.2f} s, of it matrix multiplies {matmul_s[name]:6.2f} s ({matmul_s[name] / total:.0%})")
        if name == "timm":
            print(f"  ceiling of ours vs timm if everything but our matrix multiplies took no time: {total / matmul_s['ours']:.2f}x")


# ---------------------------------------------------------------------------------------------
# block: one SwinV2-G stage-1 block, math vs sdpa vs sequential
# ---------------------------------------------------------------------------------------------


def make_block_pass(
    impl: str, scope: str, img: int, chunk_windows: int, device: torch.device
) -> Callable[[], None]:
    """Forward+backward of the shifted SwinV2-G stage-1 block (``scope="block"``) or of its
    window attention alone (``scope="attention"``, on the partitioned windows)."""
    torch.manual_seed(0)  # the same weights and input for every kernel
    tokens = img // 4
    block = SwinTransformerV2Block(
        512,
        input_resolution=(tokens, tokens),
        num_heads=16,
        window_size=(32, 32),
        shift=True,
        attn_impl=impl,
        chunk_windows=chunk_windows,
    ).to(device)
    block.attn.reset_parameters()
    if scope == "block":
        module, inputs = block, (torch.randn(1, tokens, tokens, 512, device=device),)
    else:
        n_windows = (tokens // 32) ** 2
        module, inputs = block.attn, (torch.randn(n_windows, 32 * 32, 512, device=device), block.region_ids)
    inputs[0].requires_grad_(True)

    def run() -> None:
        with autocast(device):
            out = module(*inputs)
        out.sum().backward()
        module.zero_grad(set_to_none=True)
        inputs[0].grad = None

    return run


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def probe_cpu_memory(impl: str, scope: str, img: int, chunk_windows: int) -> None:
    """Subprocess side of the CPU memory measurement: prints the peak as JSON."""
    run = make_block_pass(impl, scope, img, chunk_windows, torch.device("cpu"))
    gc.collect()
    with contextlib.suppress(OSError):  # "5" resets VmHWM (Linux >= 4.0); without it setup peaks count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    before = _rss_bytes("VmRSS")
    run()
    print(json.dumps({"peak_bytes": _rss_bytes("VmHWM") - before}))


def measure_cpu_memory(impl: str, scope: str, img: int, chunk_windows: int) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--probe", impl, scope, str(img), str(chunk_windows)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def measure_cuda_memory(run: Callable[[], None], device: torch.device) -> int:
    run()  # warm-up: kernels chosen, workspace allocated
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def bench_block(args: argparse.Namespace, device: torch.device) -> None:
    tokens = args.block_img // 4
    n_windows = (tokens // 32) ** 2
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    method = (
        "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "resident high-water (VmHWM) of a fresh subprocess per kernel, glibc mmap threshold 64 KiB"
    )
    print(
        f"\n[block] SwinV2-G stage-1 block (C=512, 16 heads, window 32, shifted) at {args.block_img}x{args.block_img} px "
        f"= {tokens}x{tokens} tokens, {n_windows} windows, batch 1, {precision}, {device.type}; "
        f"sequential chunk = {args.chunk_windows} windows\n  peak memory: {method}; times: median of "
        f"{args.iters} alternating forward+backward passes after 1 warm-up"
    )
    for scope in ("block", "attention"):
        passes = {impl: make_block_pass(impl, scope, args.block_img, args.chunk_windows, device) for impl in IMPLS}
        peaks = {}
        for impl, run in passes.items():
            if device.type == "cuda":
                peaks[impl] = measure_cuda_memory(run, device)
            else:
                peaks[impl] = measure_cpu_memory(impl, scope, args.block_img, args.chunk_windows)
                run()  # warm-up for the timing below
        times = alternate(passes, args.iters, device)
        print(f"  {scope}:")
        for impl in IMPLS:
            print(
                f"    {impl:<11} peak {peaks[impl] / GIB:6.2f} GiB  ({peaks[impl] / peaks['math']:.2f} of math)   "
                f"time {median(times[impl]):7.3f} s  ({median(times[impl]) / median(times['math']):.2f} of math)"
            )
        del passes
        gc.collect()


# ---------------------------------------------------------------------------------------------
# giant: one SwinV2-G training step at 1536 px (cuda)
# ---------------------------------------------------------------------------------------------


def apply_activation_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant checkpoint around every block, applied from outside the model."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as apply_ac,
    )

    apply_ac(
        model,
        checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: isinstance(m, SwinTransformerV2Block),
    )


def bench_giant(args: argparse.Namespace, device: torch.device) -> None:
    img = args.giant_img
    # The last stage's 48x48 map at 1536 px is not a multiple of 32 (the paper pads it for
    # detection); a 24-token window there tiles it exactly.
    windows = (32, 32, 32, 24)
    t0 = time.perf_counter()
    model = swinv2.build_model(
        "swinv2_giant",
        img_size=img,
        window_size=windows,
        attn_impl=("sequential", "sequential", "sdpa", "sdpa"),
        chunk_windows=args.chunk_windows,
        device="meta",
    )
    model.to_empty(device=device)
    model.init_weights()
    apply_activation_checkpointing(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"\n[giant] SwinV2-G ({n_params / 1e9:.2f}B params) training step at {img}x{img}, windows {windows}, batch 1, "
        f"bf16 autocast, fp32 weights + fused AdamW, activation checkpointing per block, sequential attention "
        f"(chunk {args.chunk_windows}) in stages 1-2; built in {time.perf_counter() - t0:.1f} s"
    )
    # fused AdamW: no multi-tensor temporaries the size of the weights
    step = make_train_step(model, device, batch=1, img=img, fused=True)
    warm = timed(step, device)  # allocates the AdamW state
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    times = [timed(step, device) for _ in range(args.iters)]
    peak = torch.cuda.max_memory_allocated(device)
    print(
        f"  step time {median(times):.2f} s (median of {args.iters}; first step {warm:.1f} s)\n"
        f"  peak GPU memory {peak / GIB:.1f} GiB allocated ({before / GIB:.1f} GiB of it weights, grads and "
        f"AdamW state held between steps); {torch.cuda.max_memory_reserved(device) / GIB:.1f} GiB reserved"
    )


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--parts", default=None, help="comma-separated: train,profile,block,giant (default: train,block; +giant on cuda)")
    p.add_argument("--quick", action="store_true", help="batch 8, 3 rounds, 512 px block, no compile")
    p.add_argument("--iters", type=int, default=None, help="alternating rounds per measurement (default 5, quick 3)")
    p.add_argument("--batch", type=int, default=None, help="train batch size (default 16, quick 8)")
    p.add_argument("--compile", default=None, choices=("none", "ours", "both"), help="default both (quick: none)")
    p.add_argument("--attn-impl", default="sdpa", choices=IMPLS, help="kernel of our SwinV2-T in the train part")
    p.add_argument("--block-img", type=int, default=None, help="block input size in px (default 768, quick 512)")
    p.add_argument("--chunk-windows", type=int, default=4, help="windows per chunk of the sequential kernel")
    p.add_argument("--giant-img", type=int, default=1536)
    args = p.parse_args(argv)
    quick = args.quick
    args.iters = args.iters or (3 if quick else 5)
    args.batch = args.batch or (8 if quick else 16)
    args.compile = args.compile or ("none" if quick else "both")
    args.block_img = args.block_img or (512 if quick else 768)
    if args.block_img % 128:
        p.error("--block-img must be a multiple of 128 (4 px patches, 32-token windows)")
    default_parts = "train,block,giant" if args.device == "cuda" else "train,block"
    args.parts = (args.parts or default_parts).split(",")
    unknown = set(args.parts) - {"train", "profile", "block", "giant"}
    if unknown:
        p.error(f"unknown part(s) {sorted(unknown)}; choose from train, profile, block, giant")
    if "giant" in args.parts and args.device != "cuda":
        p.error("the giant part needs --device cuda (3B parameters with AdamW take about 48 GB)")
    return args


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        impl, scope, img, chunk = sys.argv[2:6]
        probe_cpu_memory(impl, scope, int(img), int(chunk))
        return
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    print(f"torch {torch.__version__}, {device}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{os.cpu_count()} CPUs'}")
    if "train" in args.parts:
        bench_train(args, device)
    if "profile" in args.parts:
        bench_profile(args, device)
    if "block" in args.parts:
        bench_block(args, device)
    if "giant" in args.parts:
        bench_giant(args, device)


if __name__ == "__main__":
    main()
