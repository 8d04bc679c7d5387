"""The model library: kernel equivalence, sizes, meta-device init, window handling, SimMIM."""

import math
import time

import pytest
import torch
import torch.nn.functional as F

import swinv2
from swinv2.attention import SHIFT_MASK_VALUE, _math_kernel, relative_coords_table

TINY = dict(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=5)


def tiny(**overrides) -> swinv2.SwinTransformerV2:
    return swinv2.build_model("swinv2_tiny_window8_256", **{**TINY, "drop_path_rate": 0.0, **overrides})


def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its init so zero post-norms do not hide differences."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def set_impl(model: swinv2.SwinTransformerV2, impl: str, chunk: int = 3) -> None:
    for block in model.blocks():
        block.attn.attn_impl = impl
        block.attn.chunk_windows = chunk


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_attention_kernels_agree_on_outputs_and_gradients(chunk):
    torch.manual_seed(0)
    model = tiny(img_size=(64, 96))  # non-square: shifted windows with different region layouts
    perturb_(model)
    x = torch.randn(2, 3, 64, 96)
    results = {}
    for impl in swinv2.ATTN_IMPLS:
        set_impl(model, impl, chunk)
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        results[impl] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    ref_out, ref_grads = results["math"]
    assert any(b.shifted for b in model.blocks())
    for impl in ("sdpa", "sequential"):
        out, grads = results[impl]
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-4, msg=f"{impl}: grad of {name}")
    # With gradients on CPU, `sdpa` (and `sequential`'s chunks) run the math form; without them
    # they call F.scaled_dot_product_attention: the model's outputs through it, shifted windows too.
    with torch.no_grad():
        set_impl(model, "math", chunk)
        ref_out = model(x)
        for impl in ("sdpa", "sequential"):
            set_impl(model, impl, chunk)
            torch.testing.assert_close(model(x), ref_out, atol=1e-5, rtol=0, msg=f"{impl} without grad")


def test_sdpa_agrees_with_the_math_kernel_on_outputs_and_gradients():
    """F.scaled_dot_product_attention as `_sdpa_kernel` calls it (scale=1.0, the learned bias plus
    the shift mask as an additive mask that requires grad) against `_math_kernel`: outputs and the
    gradients of q, k, v and the bias (broadcast over the batch, so its gradient sums over it)."""
    g = torch.Generator().manual_seed(0)
    b, h, n, d = 3, 4, 16, 8
    q = F.normalize(torch.randn(b, h, n, d, generator=g), dim=-1) * 10
    k = F.normalize(torch.randn(b, h, n, d, generator=g), dim=-1)
    v = torch.randn(b, h, n, d, generator=g)
    regions = torch.arange(n) // 6  # three shift regions
    shift = torch.where(regions[:, None] == regions[None, :], 0.0, SHIFT_MASK_VALUE)
    bias = 16 * torch.sigmoid(torch.randn(1, h, n, n, generator=g)) + shift
    results = {}
    for name, kernel in (
        ("sdpa", lambda *t: F.scaled_dot_product_attention(*t[:3], attn_mask=t[3], scale=1.0)),
        ("math", _math_kernel),
    ):
        inputs = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        out = kernel(*inputs)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[name] = (out.detach(), [t.grad for t in inputs])
    (out, grads), (ref_out, ref_grads) = results["sdpa"], results["math"]
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for name, grad, ref in zip(("q", "k", "v", "bias"), grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-5, msg=f"grad of {name}")
    assert ref_grads[3].abs().max() > 1e-2  # the bias gets a real gradient


def test_sequential_attention_keeps_only_one_chunk_of_scores():
    """What autograd keeps of N x N tensors for backward, all chunks together, is at most one
    chunk's scores plus the (H, N, N) position bias: the chunks' scores are recomputed, not saved."""
    torch.manual_seed(0)
    windows, n, heads, chunk = 16, 64, 2, 2
    attn = swinv2.WindowAttention(
        32, window=(8, 8), num_heads=heads, attn_impl="sequential", chunk_windows=chunk
    )
    x = torch.randn(windows, n, 32, requires_grad=True)
    saved: dict[int, int] = {}  # storage -> elements: one tensor saved by several nodes counts once

    def pack(t):
        if t.dim() >= 2 and t.shape[-1] == t.shape[-2] == n:
            ptr = t.untyped_storage().data_ptr()
            saved[ptr] = max(saved.get(ptr, 0), t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x).sum().backward()
    one_chunk_scores, bias = chunk * heads * n * n, heads * n * n
    # without the recomputation every chunk's scores stay: windows / chunk = 8 times one chunk's
    assert sum(saved.values()) <= one_chunk_scores + bias, saved


@pytest.mark.parametrize(
    "name, expected",
    [
        ("swinv2_tiny_window8_256", 28.35e6),
        ("swinv2_small_window8_256", 49.73e6),
        ("swinv2_base_window8_256", 87.92e6),
        ("swinv2_large_window12to16_192to256", 196.74e6),
        ("swinv2_huge", 658.0e6),
        ("swinv2_giant", 3.00e9),
    ],
)
def test_parameter_counts_match_the_paper(name, expected):
    model = swinv2.build_model(name, num_classes=1000, device="meta")
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.005, count


def test_giant_builds_on_meta_quickly_without_memory():
    start = time.perf_counter()
    # at 1536 px the last stage's 48x48 map takes window 16: 32 does not tile it
    model = swinv2.build_model("swinv2_giant", img_size=1536, window_size=(32, 32, 32, 16), device="meta")
    assert time.perf_counter() - start < 5
    assert all(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    # H and G carry the extra main-branch norm every 6 blocks: 42 // 6 in stage 3
    assert sum(b.norm3 is not None for b in model.layers[2].blocks) == 7
    assert model.layers[0].blocks[1].window_size == (32, 32)


def test_meta_materialisation_initialises_everything():
    reference = tiny()
    model = swinv2.build_model("swinv2_tiny_window8_256", **TINY, device="meta")
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.fill_(float("nan"))
    model.init_weights()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.isfinite(p).all(), name
        # same init rule: identical constants, matching spread for random tensors
        if q.std() == 0 or p.numel() == 1:
            torch.testing.assert_close(p, q, msg=name)
        else:
            assert 0.5 < p.std() / q.std() < 2, name
    for (name, b), (_, c) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, c, msg=name)
    for block in model.blocks():
        for norm in (block.norm1, block.norm2):
            assert not norm.weight.any() and not norm.bias.any()
    assert torch.allclose(model.layers[0].blocks[0].attn.logit_scale, torch.tensor(math.log(10.0)))


def test_log_cpb_table_follows_the_pretrained_window():
    table = relative_coords_table((16, 16), (12, 12))
    # offset 11 in a 12-window is normalised to 8 before the log: sign * log2(9) / log2(8)
    assert table[15 + 11, 15, 0].item() == pytest.approx(math.log2(9) / 3)
    assert table[15, 15].abs().sum() == 0
    assert table.shape == (31, 31, 2)


def test_window_is_clipped_to_small_maps_without_shift():
    model = tiny(img_size=64, window_size=8)  # stage 2 map is 8x8: one window, no shift
    assert model.layers[1].blocks[1].window_size == (8, 8)
    assert not model.layers[1].blocks[1].shifted
    model = tiny(img_size=32, window_size=8)  # stage 2 map is 4x4 < window
    assert model.layers[1].blocks[1].window_size == (4, 4)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_window_that_does_not_divide_the_map_is_an_error():
    with pytest.raises(ValueError, match="does not divide"):
        tiny(img_size=64, window_size=6)
    with pytest.raises(ValueError, match="unknown model 'swinv2_tiny_window7_224'"):
        swinv2.build_model("swinv2_tiny_window7_224")


def test_pretrained_window_transfer_reuses_the_cpb_mlp():
    small = tiny(window_size=4)
    big = tiny(window_size=8, pretrained_window_sizes=4)
    big.load_state_dict(small.state_dict())
    assert big(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_simmim_loss_counts_only_masked_pixels():
    torch.manual_seed(0)
    model = swinv2.SimMIM(tiny(num_classes=0), norm_target=False)
    images = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 16, 16, dtype=torch.long)
    mask[:, :8] = 1
    loss, pred = model(images, mask)
    assert pred.shape == images.shape
    expected = (pred - images).abs()[:, :, :32].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    loss.backward()
    assert model.mask_token.grad.abs().sum() > 0
    assert model.encoder.stride == 8  # two stages of a patch-4 model
    assert model.decoder[0].out_channels == 8**2 * 3
    # DDP copies (and warns about) a gradient whose strides differ from its bucket view's: a
    # channels-last input gives the 1x1 conv weight strides (C, 1, C, C) instead of (C, 1, 1, 1)
    weight = model.decoder[0].weight
    assert weight.grad.stride() == weight.stride()


def test_normalized_targets_match_a_direct_window_computation():
    torch.manual_seed(0)
    images = torch.randn(1, 2, 12, 12)
    out = swinv2.normalize_targets(images, window=5)
    i, j = 0, 7  # a border pixel: the window is clipped to the image
    patch = images[0, 1, max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3]
    expected = (images[0, 1, i, j] - patch.mean()) / (patch.var(unbiased=True) + 1e-6).sqrt()
    assert out[0, 1, i, j].item() == pytest.approx(expected.item(), rel=1e-4)


def test_bf16_autocast_forward_backward_on_cpu():
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)


def test_autograd_functions_pass_gradcheck():
    """The hand-written backwards, in float64 against finite differences."""
    from swinv2.attention import CosineHeads
    from swinv2.model import _GELUFunction, _PermuteTokens

    def f64(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    # (windows 2, tokens 5, q/k/v, heads 3, head dim 4); per-head logit scales
    qkv, scale = f64(2, 5, 3, 3, 4), (torch.rand(3, 1, 1, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(CosineHeads.apply, (qkv, scale))
    q, k, v = CosineHeads.apply(qkv, scale)
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    torch.testing.assert_close(q.norm(dim=-1, keepdim=True), scale.expand(2, 3, 5, 1))

    order = torch.randperm(6)
    assert torch.autograd.gradcheck(_PermuteTokens.apply, (f64(2, 6, 3), order, torch.argsort(order)))
    # the GELU's in-place backward, fed by a Linear as in the MLP
    assert torch.autograd.gradcheck(lambda x, w: _GELUFunction.apply(x) @ w, (f64(4, 6), f64(6, 3)))


def test_stochastic_depth_draws_like_timm_drop_path():
    from timm.layers import DropPath

    from swinv2.model import add_residual

    x, branch = torch.randn(64, 3, 3, 2), torch.randn(64, 3, 3, 2)
    torch.manual_seed(0)
    ours = add_residual(x, branch, 0.4, training=True)
    torch.manual_seed(0)
    expected = x + DropPath(0.4)(branch)
    torch.testing.assert_close(ours, expected)
    dropped = (ours == x).flatten(1).all(1)
    assert 0 < dropped.sum() < 64  # some samples dropped, not all
    assert torch.equal(add_residual(x, branch, 0.4, training=False), x + branch)


def test_compiles_without_graph_breaks_and_matches_eager():
    """torch.compile traces the hand-written autograd functions whole (``fullgraph=True`` fails on
    any graph break), with stochastic depth on and a shifted block, and its gradients match eager.
    The backend runs inductor's decompositions and partitioner but no code generation: seconds
    instead of a minute, and eager's random draws."""
    model = tiny(depths=(2,), num_heads=(2,), drop_path_rate=0.2).train()
    perturb_(model)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 4])
    grads = []
    for m in (model, torch.compile(model, fullgraph=True, backend="aot_eager_decomp_partition")):
        model.zero_grad()
        torch.manual_seed(3)
        F.cross_entropy(m(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[1].items():
        torch.testing.assert_close(g, grads[0][name], atol=1e-5, rtol=1e-4, msg=name)
