"""Optimisation: weight-decay exclusions, layer-wise LR decay, LR scaling and the step schedules.

Expected layer ids and scales are written out by hand for a 2-stage model with depths (1, 2):
num_layers = 1 + 2 + 2 = 5, so layer k gets 0.75 ** (4 - k).
"""

import pytest
import torch

import swinv2
from train.config import ConfigError, OptimConfig
from train.optim import build_optimizer, build_scheduler, param_groups, scaled_lr

TINY = dict(img_size=32, embed_dim=8, depths=(1, 2), num_heads=(1, 2), window_size=4)

# layer 0: patch_embed, 1: the single block of stage 0 and the PatchMerging after it,
# 2 and 3: the two blocks of stage 1, 4: final norm, head, SimMIM decoder.
SCALE_BY_PREFIX = {
    "mask_token": 0.31640625,
    "patch_embed.": 0.31640625,
    "layers.0.blocks.0.": 0.421875,
    "layers.0.downsample.": 0.421875,
    "layers.1.blocks.0.": 0.5625,
    "layers.1.blocks.1.": 0.75,
    "norm.": 1.0,
    "head.": 1.0,
    "decoder.": 1.0,
}
BLOCKS = ("layers.0.blocks.0.", "layers.1.blocks.0.", "layers.1.blocks.1.")
# Everything else (1-D, biases, q/v bias, logit_scale, cpb_mlp weights, norms) has no decay.
DECAYED = {
    "patch_embed.proj.weight",
    *(
        b + w
        for b in BLOCKS
        for w in ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
    ),
    "layers.0.downsample.reduction.weight",
    "head.weight",
}


def tiny(num_classes: int = 3) -> swinv2.SwinTransformerV2:
    return swinv2.build_model("swinv2_tiny_window8_256", **TINY, num_classes=num_classes)


def by_name(groups: list[dict]) -> dict[str, tuple[float, float]]:
    """Parameter name -> (weight_decay, lr_scale), checking that names and params line up."""
    out = {}
    for g in groups:
        assert len(g["params"]) == len(g["param_names"])
        for name in g["param_names"]:
            assert name not in out, f"{name} in two groups"
            out[name] = (g["weight_decay"], g["lr_scale"])
    return out


def expected_scale(name: str) -> float:
    return next(
        s for prefix, s in SCALE_BY_PREFIX.items() if name.removeprefix("encoder.").startswith(prefix)
    )


def test_param_groups_decay_and_layer_scales():
    model = tiny()
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)
    got = by_name(groups)
    assert set(got) == {n for n, _ in model.named_parameters()}
    assert {n for n, (wd, _) in got.items() if wd > 0} == DECAYED
    assert all(wd in (0.0, 0.05) for wd, _ in got.values())
    for name, (_, scale) in got.items():
        assert scale == pytest.approx(expected_scale(name), rel=1e-12), name
    assert len(groups) == 10  # 5 layers x (decay, no decay)


def test_param_groups_without_layer_decay_and_frozen_params():
    model = tiny()
    model.patch_embed.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(0.0, 1.0), (0.1, 1.0)]
    got = by_name(groups)
    assert not any(n.startswith("patch_embed.") for n in got)
    assert {n for n, (wd, _) in got.items() if wd > 0} == DECAYED - {"patch_embed.proj.weight"}


def test_param_groups_simmim_wrapper():
    model = swinv2.SimMIM(tiny(num_classes=0))
    got = by_name(param_groups(model, weight_decay=0.05, layer_decay=0.75))
    assert set(got) == {n for n, _ in model.named_parameters()}
    assert got["mask_token"] == (0.0, 0.31640625)
    assert got["decoder.0.weight"] == (0.05, 1.0)
    assert got["decoder.0.bias"] == (0.0, 1.0)
    assert got["encoder.layers.0.downsample.reduction.weight"] == (0.05, 0.421875)
    assert got["encoder.layers.1.blocks.1.attn.cpb_mlp.2.weight"] == (0.0, 0.75)
    decayed = {n for n, (wd, _) in got.items() if wd > 0}
    assert decayed == {"encoder." + n for n in DECAYED - {"head.weight"}} | {"decoder.0.weight"}
    for name, (_, scale) in got.items():
        assert scale == pytest.approx(expected_scale(name), rel=1e-12), name


def test_scaled_lr():
    assert scaled_lr(5e-4, 1024, True) == pytest.approx(1e-3)
    assert scaled_lr(5e-4, 128, True) == pytest.approx(1.25e-4)
    assert scaled_lr(5e-4, 1024, False) == 5e-4


def lrs_at(scheduler, optimizer, step: int) -> tuple[float, float]:
    """(LR of the patch-embedding weight group, LR of the head weight group) after ``step`` updates."""
    scheduler.step_update(step)
    lr = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    return lr["patch_embed.proj.weight"], lr["head.weight"]


def cfg(**kw) -> OptimConfig:
    # scaled for total batch 1024: base 1e-3, warmup 1e-6, min 1e-5
    base = dict(base_lr=5e-4, warmup_lr=5e-7, min_lr=5e-6, warmup_epochs=1, layer_decay=0.75)
    return OptimConfig(**{**base, **kw})


def test_optimizer_settings_and_one_step():
    model = tiny()
    opt = build_optimizer(model, cfg(betas=[0.8, 0.9], eps=1e-6), total_batch=1024)
    assert isinstance(opt, torch.optim.AdamW)
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"]) == (pytest.approx(1e-3), (0.8, 0.9), 1e-6)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()  # the extra group keys (lr_scale, param_names) are accepted and kept
    assert "lr_scale" in opt.state_dict()["param_groups"][0]


def test_cosine_schedule_with_layer_scale():
    opt = build_optimizer(tiny(), cfg(), total_batch=1024)
    sched = build_scheduler(opt, cfg(), total_batch=1024, steps_per_epoch=10, epochs=3)
    s0 = 0.31640625  # layer 0 scale
    # built schedulers already hold the step-0 LR
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6 * s0, rel=1e-9)
    cases = {
        0: 1e-6,  # warmup LR
        5: 1e-6 + 0.5 * (1e-3 - 1e-6),  # halfway through the linear warmup
        10: 1e-3,  # end of warmup: peak LR
        20: 5.05e-4,  # half the cosine: (1e-3 + 1e-5) / 2
        30: 1e-5,  # end: min LR
    }
    for step, lr in cases.items():
        embed, head = lrs_at(sched, opt, step)
        assert head == pytest.approx(lr, rel=1e-9), step
        assert embed == pytest.approx(lr * s0, rel=1e-9), step


def test_warmup_steps_override_and_too_long_warmup():
    opt = build_optimizer(tiny(), cfg(), total_batch=512)
    sched = build_scheduler(opt, cfg(warmup_steps=4), total_batch=512, steps_per_epoch=10, epochs=3)
    assert lrs_at(sched, opt, 4)[1] == pytest.approx(5e-4, rel=1e-9)
    with pytest.raises(ConfigError, match="warmup"):
        build_scheduler(opt, cfg(warmup_epochs=3), total_batch=512, steps_per_epoch=10, epochs=3)


def test_multistep_schedule_drops_at_milestone():
    c = cfg(schedule="multistep", decay_epochs=[2], decay_rate=0.1)
    opt = build_optimizer(tiny(), c, total_batch=1024)
    sched = build_scheduler(opt, c, total_batch=1024, steps_per_epoch=10, epochs=3)
    s0 = 0.31640625
    for step, lr in {0: 1e-6, 10: 1e-3, 19: 1e-3, 20: 1e-4, 29: 1e-4}.items():
        embed, head = lrs_at(sched, opt, step)
        assert head == pytest.approx(lr, rel=1e-9), step
        assert embed == pytest.approx(lr * s0, rel=1e-9), step
