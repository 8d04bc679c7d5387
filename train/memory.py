"""Per-GPU memory model of a SwinV2 training step: model state as each strategy shards it, activations
counted from the tensors every block saves for backward, the transient attention peak, and a search
for the cheapest settings that fit. Pure functions on shapes; nothing here allocates or talks to
other processes. ``swinv2-memory`` (``train/memory_cli.py``) prints it.

Activations are counted per block from the code in ``swinv2/model.py`` and ``swinv2/attention.py``
(``A = B*T*C`` elements for a map of T tokens with C channels, ``M = B*T*hidden``,
``S = B*T*heads*N`` for the N x N attention of windows of N tokens):

- always saved: qkv input A, the per-head q, k (normalised) and v 3A (``CosineHeads``), proj input A,
  norm1/norm2 inputs 2A (+A for the H/G extra norm), fc1 input A, GELU input and fc2 input 2M, and
  small per-token vectors (LayerNorm mean/rstd, q/k norms);
- ``math``: the softmax output S (scores are updated in place and not kept);
- ``sdpa`` (GPU memory-efficient kernel): its output A, the log-sum-exp, and the additive mask it
  was given: heads*N^2 unshifted, nW*heads*N^2 for shifted blocks (batch-independent); on CPU with
  a learned bias the model falls back to ``math`` (see ``_sdpa_kernel``), and so does this model;
- ``sequential``: no N x N term; each chunk is recomputed in backward from its slices of q, k, v.

Element sizes: fp32 4 bytes; bf16 2 bytes, except under torch.autocast (how the trainer runs every
strategy), which keeps LayerNorm inputs, the residual stream and the softmax output in fp32.

The transient of a block is what its backward holds on top of what it saved, at the worse of two
moments: in the MLP's backward, the gradients of the GELU output and of the residual stream
(M + A); in the attention's backward, once the MLP, norms and proj have freed their tensors, the
N x N gradients (math: of the softmax output and of the scores, 2S, then of the position bias;
sdpa: the dense gradient of the broadcast bias, S, and its reductions to the mask and the bias;
sequential: one recomputed chunk's mask, scores, softmax output and gradients, about 3 x
chunk*heads*N^2) plus the gradients of q, k, v. Backward runs the stages in reverse and frees as it
goes, so the step's peak is the largest of "activations of the stages up to s + stage s's
transient" (a checkpointed stage rebuilds one block's saved tensors first).

Checked against measured CPU memory in ``tests/test_memory.py`` (within 20%; kept bytes within 3%).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

GiB = 1024**3

STRATEGIES: tuple[str, ...] = (
    "single",
    "ddp",
    "deepspeed_zero1",
    "deepspeed_zero2",
    "fairscale",
    "fsdp",
    "deepspeed_zero3",
)
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
PLAN_IMPLS: tuple[str, ...] = ("math", "sdpa", "sequential")
# reduce_bucket_size / allgather_bucket_size (elements) of configs/strategy/deepspeed_*.yaml
# (DeepSpeed's own default is 5e8: 1.9 GiB of bf16 buckets per GPU).
DS_BUCKET_ELEMS = 50_000_000
# Strategies that keep fp32 weights, so that autocast caches a bf16 copy of each for the step;
# FSDP (param_dtype) and DeepSpeed hand the forward bf16 weights already.
FP32_WEIGHT_STRATEGIES = ("single", "ddp", "fairscale")
# Relative step-time cost of each strategy over DDP, used only to rank suggestions: ZeRO-1/2 and
# fairscale move the same bytes as DDP's all-reduce (reduce-scatter + all-gather); ZeRO-3/FSDP
# gather the parameters a second time for backward (1.5x); offload adds PCIe copies of the
# sharded state and an optimizer step on the CPU every step.
STRATEGY_COST = {
    "single": 0.0,
    "ddp": 0.0,
    "deepspeed_zero1": 0.01,
    "deepspeed_zero2": 0.02,
    "fairscale": 0.03,
    "fsdp": 0.10,
    "deepspeed_zero3": 0.12,
}
OFFLOAD_COST = 0.5
# Sequential attention also launches its kernels once per chunk: a small charge per stage that uses
# it (at 16 windows per chunk), so that it is suggested only where it saves memory.
SEQUENTIAL_STAGE_COST = 0.002


@dataclass(frozen=True)
class BlockShape:
    """One SwinV2 block at a given input size (per image)."""

    stage: int
    tokens: int  # T = H*W of the feature map
    dim: int  # C
    hidden: int  # MLP hidden width
    heads: int
    window: int  # N tokens per window (after shrinking to the map)
    cpb_table: int  # (2Wh-1)*(2Ww-1) relative offsets fed to the CPB MLP
    cpb_hidden: int
    shifted: bool
    extra_norm: bool
    params: int


@dataclass(frozen=True, eq=False)
class ModelShape:
    """Everything the memory model needs from a built (meta-device) SwinV2. Compared by identity
    (``model_shape`` caches them), so the search's caches do not hash every block."""

    name: str
    img_size: tuple[int, int]
    params: int
    blocks: tuple[BlockShape, ...]
    embed_tokens: int  # tokens after the patch embedding (per image)
    embed_dim: int
    merges: tuple[tuple[int, int], ...]  # (tokens, dim) entering each PatchMerging
    head_features: int
    largest_unit_params: int  # biggest block or PatchMerging: what FSDP/ZeRO-3 gather at once

    @property
    def num_stages(self) -> int:
        return max(b.stage for b in self.blocks) + 1


def model_shape(name: str, **overrides: Any) -> ModelShape:
    """Shapes of a named variant with constructor overrides (``img_size``, per-stage
    ``window_size``, ...), read from the model built on the meta device (exact parameter counts)."""
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()))
    return _model_shape(name, frozen)


@functools.lru_cache(maxsize=16)
def _model_shape(name: str, overrides: tuple[tuple[str, Any], ...]) -> ModelShape:
    # Building computes every block's position and shift tables on the CPU: seconds at 1536 px.
    from swinv2 import build_model

    model = build_model(name, device="meta", **dict(overrides))
    blocks = []
    for i, stage in enumerate(model.layers):
        for blk in stage.blocks:
            res, win = blk.input_resolution, blk.window_size
            blocks.append(
                BlockShape(
                    stage=i,
                    tokens=res[0] * res[1],
                    dim=blk.attn.dim,
                    hidden=blk.mlp.fc1.out_features,
                    heads=blk.attn.num_heads,
                    window=win[0] * win[1],
                    cpb_table=(2 * win[0] - 1) * (2 * win[1] - 1),
                    cpb_hidden=blk.attn.cpb_mlp[0].out_features,
                    shifted=blk.shifted,
                    extra_norm=blk.norm3 is not None,
                    params=sum(p.numel() for p in blk.parameters()),
                )
            )
    merges = []
    for i, stage in enumerate(model.layers):
        if stage.downsample is not None:
            last = [b for b in blocks if b.stage == i][-1]
            merges.append((last.tokens, last.dim))
    units = [b.params for b in blocks] + [
        sum(p.numel() for p in s.downsample.parameters()) for s in model.layers if s.downsample is not None
    ]
    return ModelShape(
        name=name,
        img_size=model.img_size,
        params=sum(p.numel() for p in model.parameters()),
        blocks=tuple(blocks),
        embed_tokens=blocks[0].tokens,
        embed_dim=model.embed_dim,
        merges=tuple(merges),
        head_features=model.num_features,
        largest_unit_params=max(units),
    )


@dataclass(frozen=True)
class Plan:
    """The settings of one run as seen from one GPU."""

    strategy: str = "ddp"
    world_size: int = 1
    micro_batch: int = 1
    precision: str = "bf16"
    checkpoint: tuple[bool, ...] = (False, False, False, False)  # per stage
    attn_impl: tuple[str, ...] = ("sdpa", "sdpa", "sdpa", "sdpa")  # per stage
    chunk_windows: int = 16
    offload: bool = False  # optimizer (and for ZeRO-3/FSDP parameters) on the CPU
    device: str = "cuda"  # "cpu": sdpa with a learned bias runs the math kernel (model's CPU path)
    # bf16 under torch.autocast, as the trainer runs every strategy: LayerNorm inputs, the residual
    # stream and the softmax output stay fp32. False: a model cast to bf16 throughout.
    autocast: bool = True
    ds_bucket_elems: int = DS_BUCKET_ELEMS

    def check(self, num_stages: int) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.world_size < 1 or self.micro_batch < 1 or self.chunk_windows < 1:
            raise ValueError("world size, micro batch and chunk_windows must be >= 1")
        if self.strategy == "single" and self.world_size != 1:
            raise ValueError(f"strategy=single runs one process; world size is {self.world_size}")
        if self.offload and self.strategy in ("single", "ddp", "fairscale"):
            raise ValueError(f"offload needs fsdp or deepspeed_zero1/2/3, not {self.strategy}")
        for name, value in (("checkpoint", self.checkpoint), ("attn_impl", self.attn_impl)):
            if len(value) != num_stages:
                raise ValueError(f"{name} has {len(value)} entries but the model has {num_stages} stages")
        for impl in self.attn_impl:
            if impl not in PLAN_IMPLS:
                raise ValueError(f"attn_impl={impl!r}; choose one of {', '.join(PLAN_IMPLS)}")

    @property
    def act_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def wide_bytes(self) -> int:
        """Bytes of the tensors autocast keeps in fp32 (LayerNorm inputs, softmax output)."""
        return 4 if self.precision == "fp32" or self.autocast else 2


@dataclass(frozen=True)
class BlockMemory:
    saved: int  # bytes kept for backward without checkpointing
    attn_saved: int  # the N x N part of ``saved``
    transient: int  # extra bytes on top of ``saved`` at the block's worst moment in backward
    attn_transient: int  # the N x N bytes alive in the attention's backward (or one chunk's)
    checkpointed: int  # bytes kept for backward when the block is checkpointed (its input)


def block_memory(block: BlockShape, plan: Plan, impl: str) -> BlockMemory:
    """Bytes one block keeps for backward and its transient peak (see the module docstring)."""
    e, w = plan.act_bytes, plan.wide_bytes
    b = plan.micro_batch
    a = b * block.tokens * block.dim
    m = b * block.tokens * block.hidden
    rows = b * block.tokens
    norm_vecs = rows * block.heads  # one value per token and head
    s = rows * block.heads * block.window  # B * nW * heads * N^2
    windows = b * block.tokens // block.window
    bias = block.heads * block.window**2  # the (heads, N, N) position bias
    mask = block.tokens * block.heads * block.window if block.shifted else bias  # nW * heads * N^2
    if impl == "sdpa" and plan.device == "cpu":
        impl = "math"

    norms = 3 if block.extra_norm else 2
    # Saved by proj, norm1, fc1, GELU, fc2, norm2 (and norm3): freed before the attention's backward.
    tail = e * (2 * a + 2 * m) + w * (norms * a) + 4 * 2 * norms * rows
    # qkv input A, q, k, v 3A, the inverse q/k norms (fp32 at least), and the CPB MLP's hidden layer
    front = e * 4 * a + w * 2 * norm_vecs + e * block.cpb_table * block.cpb_hidden
    grads = 2 * e * a  # gradient of the residual stream and of the attention output
    if impl == "math":
        attn_saved = w * s  # softmax output
        if e != w:
            attn_saved += e * s  # autocast: softmax runs in fp32 and "@ v" saves its bf16 copy
        # gradients of the softmax output and of the scores, then of the position bias
        attn_transient = 2 * w * s + w * bias
    elif impl == "sdpa":
        # output, log-sum-exp and the mask it was given
        attn_saved = e * (a + mask) + 4 * norm_vecs
        # PyTorch's _efficient_attention_backward allocates grad_bias at the expanded (B, heads, N, N)
        # shape of the mask (dense S), reduced afterwards to the mask's and the position bias's shapes
        attn_transient = e * (s + mask + bias)
        grads += 3 * e * a
    else:
        attn_saved = e * bias  # the position bias every chunk reads
        chunk = min(plan.chunk_windows, windows) * bias
        # one recomputed chunk: shift mask, mask + bias, scores, softmax output; then 3 gradients;
        # and the position bias's gradient, accumulated over the chunks
        attn_transient = w * 3 * chunk + e * chunk // block.heads + w * bias
        grads += 3 * e * a  # full-size gradients of q, k, v that the chunks accumulate into
    saved = front + attn_saved + tail
    mlp_phase = e * (m + a)  # gradients of the GELU output and of the residual stream
    attn_phase = attn_transient + grads - tail
    return BlockMemory(
        saved=saved,
        attn_saved=attn_saved,
        transient=max(mlp_phase, attn_phase),
        attn_transient=attn_transient,
        # a checkpointed block keeps its input: the residual stream, fp32 under autocast
        checkpointed=w * a,
    )


def other_activations(shape: ModelShape, plan: Plan) -> int:
    """Patch embedding, PatchMerging and head: never checkpointed."""
    e, w, b = plan.act_bytes, plan.wide_bytes, plan.micro_batch
    total = e * b * 3 * shape.img_size[0] * shape.img_size[1] + w * b * shape.embed_tokens * shape.embed_dim
    for tokens, dim in shape.merges:
        total += e * b * tokens * dim + w * b * tokens * dim // 2
    return total + w * b * (shape.blocks[-1].tokens + 1) * shape.head_features


@dataclass(frozen=True)
class StageMemory:
    stage: int
    blocks: int
    saved: int  # all blocks, no checkpointing
    checkpointed: int  # all blocks, checkpointed
    attn_saved: int
    attn_transient: int  # worst block
    recompute_peak: int  # worst block: saved + transient (what backward rebuilds under checkpointing)
    transient: int  # worst block


@dataclass
class Estimate:
    """Per-GPU bytes of one plan; ``rows`` is the printed breakdown (label -> bytes)."""

    plan: Plan
    rows: dict[str, int]
    stages: list[StageMemory]
    cpu_bytes: int
    margin: int
    total: int
    gpu_bytes: int
    cost: float
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_bytes


def stage_memory(shape: ModelShape, plan: Plan) -> list[StageMemory]:
    return [
        _stage_memory(shape, i, _activation_key(plan, plan.attn_impl[i])) for i in range(shape.num_stages)
    ]


def _activation_key(plan: Plan, impl: str) -> Plan:
    """The part of a plan that activations depend on, so the search reuses stage results."""
    return Plan(
        autocast=plan.autocast,
        micro_batch=plan.micro_batch,
        precision=plan.precision,
        checkpoint=(),
        attn_impl=(impl,),
        chunk_windows=plan.chunk_windows if impl == "sequential" else 0,
        device=plan.device,
    )


@functools.lru_cache(maxsize=4096)
def _stage_memory(shape: ModelShape, stage: int, key: Plan) -> StageMemory:
    mems = [block_memory(b, key, key.attn_impl[0]) for b in shape.blocks if b.stage == stage]
    return StageMemory(
        stage=stage,
        blocks=len(mems),
        saved=sum(x.saved for x in mems),
        checkpointed=sum(x.checkpointed for x in mems),
        attn_saved=sum(x.attn_saved for x in mems),
        attn_transient=max(x.attn_transient for x in mems),
        recompute_peak=max(x.saved + x.transient for x in mems),
        transient=max(x.transient for x in mems),
    )


def activation_bytes(shape: ModelShape, plan: Plan) -> tuple[int, int]:
    """(kept for backward at the end of the forward, peak on top of that during backward).

    Backward runs the stages in reverse and frees what each one kept, so while stage s is in its
    backward only the stages before it still hold their activations; a checkpointed stage
    rebuilds one block's saved tensors on top of the inputs it kept."""
    kept = other_activations(shape, plan)  # embedding, merges, head: counted as held throughout
    peak = 0
    for st, ckpt in zip(stage_memory(shape, plan), plan.checkpoint):
        kept += st.checkpointed if ckpt else st.saved
        peak = max(peak, kept + (st.recompute_peak if ckpt else st.transient))
    return kept, max(peak - kept, 0)


def state_bytes(params: int, unit_params: int, plan: Plan) -> tuple[dict[str, int], int, list[str]]:
    """Parameters, gradients, optimizer state and communication buffers per GPU as the strategy
    shards them, the bytes it moves to the CPU, and notes on the assumptions."""
    w = plan.world_size
    s = plan.strategy
    mixed = plan.precision == "bf16"
    notes: list[str] = []
    fp32 = 4 * params
    moments = 8 * params  # AdamW exp_avg + exp_avg_sq, fp32
    rows = {"parameters": 0, "fp32 master": 0, "gradients": 0, "optimizer (AdamW)": 0, "buffers": 0}
    cpu = 0
    if s in FP32_WEIGHT_STRATEGIES:
        rows["parameters"] = fp32
        rows["optimizer (AdamW)"] = moments if s != "fairscale" else moments // w
        rows["gradients"] = fp32 if s != "fairscale" else fp32 // w
        if mixed and plan.autocast:
            # autocast caches a bf16 copy of every weight for the forward and backward
            rows["buffers"] += 2 * params
            notes.append("bf16 under autocast: fp32 weights plus autocast's bf16 weight cache")
        if s == "ddp" and w > 1:
            rows["buffers"] += fp32
            notes.append(
                "ddp: gradient buckets are a second copy of the gradients (gradient_as_bucket_view=False)"
            )
    elif s in ("deepspeed_zero1", "deepspeed_zero2"):
        p_bytes = 2 if mixed else 4
        rows["parameters"] = p_bytes * params
        rows["gradients"] = p_bytes * params if s == "deepspeed_zero1" else p_bytes * params // w
        rows["fp32 master"] = fp32 // w
        rows["optimizer (AdamW)"] = moments // w
        rows["buffers"] = 2 * p_bytes * plan.ds_bucket_elems if w > 1 else 0
        notes.append(
            f"DeepSpeed: reduce + allgather buckets of {plan.ds_bucket_elems:.0e} elements each "
            "(reduce_bucket_size, allgather_bucket_size)"
        )
        if s == "deepspeed_zero1" and mixed:
            notes.append(
                "ZeRO-1 bf16 with data_types.grad_accum_dtype=fp32 runs DeepSpeed's BF16_Optimizer: "
                "+4 bytes/parameter for a full fp32 gradient buffer (not counted)"
            )
        if plan.offload:
            cpu = (
                rows["fp32 master"] + rows["optimizer (AdamW)"] + (fp32 // w if s == "deepspeed_zero2" else 0)
            )
            rows["fp32 master"] = rows["optimizer (AdamW)"] = 0
    else:  # fsdp, deepspeed_zero3: everything sharded, one or two units gathered at a time
        p_bytes = 2 if mixed else 4
        if s == "fsdp":
            rows["parameters"], rows["gradients"] = fp32 // w, fp32 // w
        else:
            rows["parameters"], rows["gradients"] = p_bytes * params // w, p_bytes * params // w
            rows["fp32 master"] = fp32 // w
        rows["optimizer (AdamW)"] = moments // w
        # the unit being computed and the one prefetched: unsharded parameters and gradients
        rows["buffers"] = 2 * unit_params * (2 * p_bytes) if w > 1 or plan.offload else 0
        notes.append(f"{s}: 2 blocks gathered at a time (current + prefetch), params and grads unsharded")
        if plan.offload:
            cpu = sum(v for k, v in rows.items() if k != "buffers")
            for k in ("parameters", "fp32 master", "gradients", "optimizer (AdamW)"):
                rows[k] = 0
    return rows, cpu, notes


@functools.lru_cache(maxsize=64)
def stage_flops(shape: ModelShape) -> tuple[tuple[float, float], ...]:
    """(forward FLOPs, forward FLOPs of the N x N products) per stage, per image."""
    out = []
    for i in range(shape.num_stages):
        blocks = [b for b in shape.blocks if b.stage == i]
        linear = sum(2 * b.tokens * (4 * b.dim**2 + 2 * b.dim * b.hidden) for b in blocks)
        attn = sum(4 * b.tokens * b.window * b.dim for b in blocks)
        out.append((linear + attn, attn))
    return tuple(out)


def recompute_cost(shape: ModelShape, plan: Plan) -> float:
    """Extra step time over a plain step, as a fraction: checkpointing recomputes a stage's forward
    (a step is ~3 forwards of FLOPs); sequential attention recomputes the attention products."""
    flops = stage_flops(shape)
    extra = sum(f for (f, _), c in zip(flops, plan.checkpoint) if c)
    extra += sum(a for (_, a), impl in zip(flops, plan.attn_impl) if impl == "sequential")
    cost = extra / (3 * sum(f for f, _ in flops))
    cost += STRATEGY_COST[plan.strategy] + (OFFLOAD_COST if plan.offload else 0.0)
    return cost + SEQUENTIAL_STAGE_COST * plan.attn_impl.count("sequential") * 16 / plan.chunk_windows


def estimate(
    shape: ModelShape, plan: Plan, *, gpu_gib: float, frag: float = 0.10, reserve_gib: float = 1.5
) -> Estimate:
    """The per-GPU breakdown of ``plan``. The margin is stated, not hidden: ``frag`` of the
    activation memory for allocator fragmentation (activations are allocated and freed every step)
    plus ``reserve_gib`` for the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers."""
    plan.check(shape.num_stages)
    rows, cpu, notes = state_bytes(shape.params, shape.largest_unit_params, plan)
    kept, transient = activation_bytes(shape, plan)
    rows = {k: v for k, v in rows.items() if v or k in ("parameters", "gradients")}
    rows["activations (kept for backward)"] = kept
    rows["attention / backward transient peak"] = transient
    margin = int(frag * (kept + transient) + reserve_gib * GiB)
    rows["margin (fragmentation + workspace)"] = margin
    return Estimate(
        plan=plan,
        rows=rows,
        stages=stage_memory(shape, plan),
        cpu_bytes=cpu,
        margin=margin,
        total=sum(rows.values()),
        gpu_bytes=int(gpu_gib * GiB),
        cost=recompute_cost(shape, plan),
        notes=notes,
    )


def candidate_plans(base: Plan, num_stages: int, chunks: Sequence[int] = (64, 32, 16, 8, 4, 1)) -> list[Plan]:
    """Every strategy (that runs at this world size), checkpointing and sequential attention per
    stage, chunk size and offload, around ``base`` (batch, precision, world size kept). On one GPU
    that is single, or FSDP/DeepSpeed for their CPU offload."""
    data_parallel = ("ddp", "fairscale") if base.world_size == 1 else ("single",)
    strategies = [s for s in STRATEGIES if s not in data_parallel]
    fast = "sdpa" if base.device == "cuda" else "math"
    plans = []
    for strategy in strategies:
        offloads = (
            (False, True)
            if strategy in ("fsdp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3")
            else (False,)
        )
        for offload, ckpt, seq in itertools.product(
            offloads,
            itertools.product((False, True), repeat=num_stages),
            itertools.product((False, True), repeat=num_stages),
        ):
            impls = tuple("sequential" if q else fast for q in seq)
            for chunk in chunks if any(seq) else (base.chunk_windows,):
                plans.append(
                    replace(
                        base,
                        strategy=strategy,
                        offload=offload,
                        checkpoint=ckpt,
                        attn_impl=impls,
                        chunk_windows=chunk,
                    )
                )
    return plans


def suggest(
    shape: ModelShape,
    base: Plan,
    *,
    gpu_gib: float,
    limit: int = 5,
    frag: float = 0.10,
    reserve_gib: float = 1.5,
    step_gib: float = 1.0,
) -> list[Estimate]:
    """Up to ``limit`` plans that fit, cheapest first (see ``recompute_cost``), each using less
    memory (by at least ``step_gib``) than every cheaper one listed: the trade-off frontier between
    speed and headroom."""
    fitting = [
        e
        for p in candidate_plans(base, shape.num_stages)
        if (e := estimate(shape, p, gpu_gib=gpu_gib, frag=frag, reserve_gib=reserve_gib)).fits
    ]
    fitting.sort(key=lambda e: (e.cost, e.total))
    out: list[Estimate] = []
    for e in fitting:
        if not out or e.total <= out[-1].total - step_gib * GiB:
            out.append(e)
    return out[:limit]
