"""Checkpoint loading and export: parity with timm and Hugging Face, round trips, SimMIM -> classifier,
22k -> 1k head slicing, and the errors a user can run into."""

from __future__ import annotations

import argparse
import re

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

import swinv2
from swinv2.labels import TEDDY_BEAR, imagenet22k_to_1k_indices
from swinv2.weights import CheckpointError, export_weights, load_pretrained

# 3 stages so that moving downsamples between stages is exercised twice; shifted windows in stages 1-2.
TINY = dict(img_size=64, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny(num_classes: int = 7, **overrides) -> swinv2.SwinTransformerV2:
    config = {**TINY, "drop_path_rate": 0.0, **overrides}
    return swinv2.build_model("swinv2_tiny_window8_256", num_classes=num_classes, **config).eval()


@torch.no_grad()
def randomize(model: nn.Module) -> nn.Module:
    """Perturb every parameter; LayerNorms (the zero-initialised post-norms included) get weights
    around 1, so that parity checks exercise every branch."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.02)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.normal_(1.0, 0.1)
            m.bias.normal_(0.0, 0.1)
    return model


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def max_diff(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.abs().max() > 1e-3  # not vacuous
    return (a - b).abs().max().item()


def timm_tiny() -> nn.Module:
    return randomize(timm.create_model("swinv2_tiny_window8_256", num_classes=7, **TINY).eval())


@pytest.mark.parametrize("transfer", [False, True], ids=["same_window", "window4_to_8"])
def test_timm_parity_tiny(transfer: bool) -> None:
    source = timm_tiny()
    if transfer:
        # timm's own window transfer: same weights, window 8 with the CPB table of window 4
        kwargs = dict(window_size=8, pretrained_window_sizes=(4, 4, 4))
        reference = timm.create_model("swinv2_tiny_window8_256", num_classes=7, **{**TINY, **kwargs}).eval()
        reference.load_state_dict(source.state_dict())
        ours = tiny(**kwargs)
    else:
        reference, ours = source, tiny()
    report = load_pretrained(ours, source.state_dict())
    assert report.layout == "timm" and report.head == "loaded"
    assert max_diff(ours, reference, torch.randn(2, 3, 64, 64)) <= 1e-5


def test_timm_parity_swinv2_tiny_256() -> None:
    reference = randomize(timm.create_model("swinv2_tiny_window8_256").eval())
    ours = swinv2.build_model("swinv2_tiny_window8_256", drop_path_rate=0.0).eval()
    assert load_pretrained(ours, reference.state_dict()).layout == "timm"
    assert max_diff(ours, reference, torch.randn(1, 3, 256, 256)) <= 1e-5


def test_hf_parity() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.Swinv2Config(
        image_size=64, patch_size=4, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=4,
        num_labels=7, drop_path_rate=0.0,
    )  # fmt: skip
    reference = randomize(transformers.Swinv2ForImageClassification(config).eval())
    ours = tiny()
    report = load_pretrained(ours, reference.state_dict())
    assert report.layout == "hf" and report.head == "loaded"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixel_values=x).logits
        assert (ours(x) - expected).abs().max().item() <= 1e-5
    # the bare encoder (Swinv2Model, no "swinv2." prefix) loads too, with a fresh head
    assert load_pretrained(tiny(), reference.swinv2.state_dict()).head == "fresh"


def test_hf_masked_image_modeling_parity() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.Swinv2Config(
        image_size=64, patch_size=4, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=4,
        drop_path_rate=0.0, encoder_stride=16,
    )  # fmt: skip
    reference = randomize(transformers.Swinv2ForMaskedImageModeling(config).eval())
    ours = swinv2.SimMIM(tiny(num_classes=0)).eval()
    report = load_pretrained(ours, reference.state_dict())
    assert report.layout == "hf" and report.reinitialized == []
    x, mask = torch.randn(2, 3, 64, 64), torch.rand(2, 16, 16) > 0.5
    with torch.no_grad():
        expected = reference(pixel_values=x, bool_masked_pos=mask.flatten(1)).reconstruction
        assert (ours.reconstruct(x, mask.float()) - expected).abs().max().item() <= 1e-5


def test_round_trips_official_ours_timm(tmp_path) -> None:
    original = randomize(tiny()).state_dict()
    official = {k: v.clone() for k, v in original.items()}
    # an official release file, with the position buffers and shift masks it carries
    official["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
    official["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    torch.save({"model": official}, tmp_path / "official.pth")

    ours = tiny()
    report = load_pretrained(ours, tmp_path / "official.pth")
    assert report.layout == "official"
    assert report.dropped == ["layers.0.blocks.0.attn.relative_position_index", "layers.0.blocks.1.attn_mask"]
    assert_same_state(ours.state_dict(), original)

    export_weights(ours, tmp_path / "official.safetensors")
    assert_same_state(safetensors.torch.load_file(tmp_path / "official.safetensors"), original)

    export_weights(ours, tmp_path / "timm.safetensors", layout="timm")
    reference = timm.create_model("swinv2_tiny_window8_256", num_classes=7, **TINY)
    timm.models.load_checkpoint(reference, str(tmp_path / "timm.safetensors"), strict=True)
    assert "layers.1.downsample.reduction.weight" in reference.state_dict()

    back = tiny()
    assert load_pretrained(back, reference.state_dict()).layout == "timm"
    assert_same_state(back.state_dict(), original)
    for path in ("official.safetensors", "timm.safetensors"):
        again = tiny()
        load_pretrained(again, tmp_path / path)
        assert_same_state(again.state_dict(), original)


@pytest.mark.parametrize("wrapper", ["state_dict", "module", "ddp"])
def test_checkpoint_wrappers(tmp_path, wrapper: str) -> None:
    original = randomize(tiny()).state_dict()
    obj = {
        "state_dict": {"state_dict": original, "epoch": 3},
        "module": {"module": original, "ds_version": "0.15", "buffer_names": []},  # DeepSpeed
        "ddp": {"model": {f"module.{k}": v for k, v in original.items()}},
    }[wrapper]
    torch.save(obj, tmp_path / "ckpt.pt")
    ours = tiny()
    load_pretrained(ours, tmp_path / "ckpt.pt")
    assert_same_state(ours.state_dict(), original)


def official_simmim_checkpoint(simmim: swinv2.SimMIM) -> dict[str, torch.Tensor]:
    """The layout of the SimMIM release: encoder./decoder.0. prefixes, encoder.mask_token as
    (1, 1, C), the CPB MLP under its old name rpe_mlp, and the position tables."""
    state = {}
    for k, v in simmim.state_dict().items():
        if k == "mask_token":
            state["encoder.mask_token"] = v.reshape(1, 1, -1)
        else:
            state[k.replace(".cpb_mlp.", ".rpe_mlp.")] = v
    state["encoder.layers.0.blocks.0.attn.relative_coords_table"] = torch.zeros(1, 7, 7, 2)
    return state


def test_simmim_checkpoint_to_classifier_and_wrapper(tmp_path) -> None:
    pretrained = randomize(swinv2.SimMIM(tiny(num_classes=0)))
    torch.save({"model": official_simmim_checkpoint(pretrained), "epoch": 799}, tmp_path / "simmim.pth")

    classifier = tiny()
    classifier.head.weight.data.fill_(float("nan"))
    report = load_pretrained(classifier, tmp_path / "simmim.pth")
    assert report.layout == "simmim" and report.head == "fresh"
    assert report.reinitialized == ["head.weight", "head.bias"]
    assert {"encoder.mask_token", "decoder.0.weight", "decoder.0.bias"} <= {
        k.replace("mask_token", "encoder.mask_token") for k in report.dropped
    }
    encoder = pretrained.encoder.state_dict()
    assert_same_state(
        {k: v for k, v in classifier.state_dict().items() if not k.startswith("head.")}, encoder
    )
    assert torch.isfinite(classifier.head.weight).all() and classifier.head.weight.std() < 0.05

    wrapper = swinv2.SimMIM(tiny(num_classes=0))
    assert load_pretrained(wrapper, tmp_path / "simmim.pth").reinitialized == []
    assert_same_state(wrapper.state_dict(), pretrained.state_dict())
    # exports keep the encoder only, so timm takes them
    export_weights(wrapper, tmp_path / "encoder.safetensors", layout="timm")
    reference = timm.create_model("swinv2_tiny_window8_256", num_classes=0, **TINY)
    timm.models.load_checkpoint(reference, str(tmp_path / "encoder.safetensors"), strict=True)
    # our own wrapper's state dict (top-level mask_token) goes to a classifier as well
    assert load_pretrained(tiny(), pretrained.state_dict()).layout == "simmim"
    # and a classifier checkpoint into the wrapper: mask token and decoder start fresh
    report = load_pretrained(swinv2.SimMIM(tiny(num_classes=0)), classifier.state_dict())
    assert report.head == "dropped" and "mask_token" in report.reinitialized


def test_22k_to_1k_map() -> None:
    rows = imagenet22k_to_1k_indices()
    assert rows.shape == (1000,) and len(rows.unique()) == 1000 and int(rows.max()) < 21841
    synsets_1k = timm.data.ImageNetInfo("imagenet-1k").label_names()
    google = timm.data.ImageNetInfo("imagenet-21k-goog").label_names()
    assert rows[synsets_1k.index(TEDDY_BEAR)] == 5564
    assert [google[i] for i in rows[:3]] == synsets_1k[:3]  # tench, goldfish, great white shark
    assert rows[0] == 359 and rows[-1] == 21817


def test_22k_head_is_sliced_to_1k() -> None:
    source = randomize(tiny(num_classes=21841)).state_dict()
    ours = tiny(num_classes=1000)
    assert load_pretrained(ours, source).head == "sliced_22k_to_1k"
    rows = imagenet22k_to_1k_indices()
    assert torch.equal(ours.head.weight, source["head.weight"][rows])
    assert torch.equal(ours.head.bias, source["head.bias"][rows])
    assert torch.equal(ours.head.weight[850], source["head.weight"][5564])  # teddy bear


def test_head_mismatch_warns_and_reinitializes() -> None:
    source = randomize(tiny(num_classes=7)).state_dict()
    ours = tiny(num_classes=5)
    ours.head.weight.data.fill_(float("nan"))
    with pytest.warns(UserWarning, match=r"head .* re-initialised"):
        report = load_pretrained(ours, source)
    assert report.head == "reinitialized" and report.reinitialized == ["head.weight", "head.bias"]
    assert torch.isfinite(ours.head.weight).all() and torch.equal(ours.head.bias, torch.zeros(5))
    assert torch.equal(ours.norm.weight, source["norm.weight"])


def test_corrupt_files_give_one_line_errors(tmp_path) -> None:
    state = tiny().state_dict()
    torch.save(state, tmp_path / "good.pth")
    safetensors.torch.save_file(state, tmp_path / "good.safetensors")
    for name in ("good.pth", "good.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"truncated_{name}").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    torch.save({"model": state, "args": argparse.Namespace(lr=1.0)}, tmp_path / "pickled.pth")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pth")
    for name in (
        "truncated_good.pth",
        "truncated_good.safetensors",
        "notes.pth",
        "pickled.pth",
        "no_weights.pth",
    ):
        with pytest.raises(CheckpointError) as error:
            load_pretrained(tiny(), tmp_path / name)
        message = str(error.value)
        assert str(tmp_path / name) in message and "\n" not in message, message
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        load_pretrained(tiny(), tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_pretrained(tiny(), tmp_path / "missing.pth")


def test_key_errors_name_the_keys() -> None:
    state = tiny().state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): layers\.0\.blocks\.0\.attn\.foo"):
        load_pretrained(tiny(), {**state, "layers.0.blocks.0.attn.foo": torch.zeros(1)})
    without = {k: v for k, v in state.items() if k != "layers.1.blocks.1.mlp.fc2.bias"}
    with pytest.raises(CheckpointError, match=re.escape("missing keys (1): layers.1.blocks.1.mlp.fc2.bias")):
        load_pretrained(tiny(), without)
    with pytest.raises(CheckpointError, match=re.escape("mis-shaped keys (1): norm.weight (3,) vs (64,)")):
        load_pretrained(tiny(), {**state, "norm.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="not a SwinV2 state dict"):
        load_pretrained(tiny(), {"fc.weight": torch.zeros(1)})


@pytest.mark.parametrize("drop_path", [0.0, 0.3], ids=["no_drop_path", "drop_path"])
def test_timm_parity_of_gradients_in_training(drop_path: float) -> None:
    """Training-mode loss and every parameter's gradient against timm's own backward: the
    autograd functions of the model (the cosine q/k heads, the token permutations, the GELU with
    the in-place backward, the fused stochastic-depth residual) against plain autograd."""
    reference = timm.create_model(
        "swinv2_tiny_window8_256", num_classes=7, drop_path_rate=drop_path, **TINY
    ).train()
    randomize(reference)
    ours = tiny(drop_path_rate=drop_path).train()
    load_pretrained(ours, reference.state_dict())
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 3, 6, 1])
    losses = []
    for model in (reference, ours):
        torch.manual_seed(1)  # the same stochastic-depth draws, in the same order
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    # timm's gradients, read as a checkpoint in timm's layout, land on our parameter names
    grads_of_reference = tiny(drop_path_rate=drop_path)
    load_pretrained(grads_of_reference, {n: p.grad for n, p in reference.named_parameters()})
    expected = dict(grads_of_reference.named_parameters())
    for name, p in ours.named_parameters():
        assert expected[name].abs().max() > 0 or p.grad.abs().max() == 0, name
        torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)
