"""SwinV2 weights in the four layouts found in the wild: load any of them, export ours.

Every source is first converted to the *canonical* layout: the official release's names (which
are our model's own names) plus, for SimMIM checkpoints, ``mask_token`` and ``decoder.0.*``. The
canonical dict is then matched against the target, a classifier or our ``SimMIM`` wrapper:

- ``official``: ``{'model': state_dict}``, ``layers.{i}.downsample`` at the end of stage i, ``head``;
- ``simmim``: ``encoder.`` / ``decoder.0.`` prefixes, ``encoder.mask_token`` (or our wrapper's
  ``mask_token``), and the CPB MLP named ``rpe_mlp`` in older checkpoints;
- ``timm``: downsample at the start of the next stage (``layers.{i+1}.downsample``), ``head.fc``;
- ``hf``: Hugging Face transformers ``Swinv2*`` models (``swinv2.`` prefix, separate query/key/value).

Position tables and shift masks are never loaded: the model recomputes them for its own window,
which is what makes window transfer (``pretrained_window_sizes``) work.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import safetensors.torch
import torch
from torch import nn

from .labels import NUM_CLASSES_1K, NUM_CLASSES_22K, imagenet22k_to_1k_indices
from .model import SwinTransformerV2
from .simmim import SimMIM

Layout = Literal["official", "simmim", "timm", "hf"]
HeadAction = Literal["loaded", "sliced_22k_to_1k", "reinitialized", "fresh", "dropped", "none"]
StateDict = dict[str, torch.Tensor]

# Buffers that older checkpoints still carry; they depend on the window, so the model recomputes them.
_RECOMPUTED = frozenset({"relative_position_index", "relative_coords_table", "attn_mask"})
# {'model': ...} official release, {'state_dict': ...} Lightning and others, {'module': ...} DeepSpeed.
_WRAPPERS = ("model", "state_dict", "module")
# Prefixes added by DistributedDataParallel and torch.compile when a wrapped model was saved.
_SAVE_PREFIXES = ("module.", "_orig_mod.")
_MAX_NAMED = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model. The message is one line and
    names the file or the offending keys."""


@dataclass(frozen=True)
class LoadReport:
    """What ``load_pretrained`` did. ``head`` is one of: ``loaded``; ``sliced_22k_to_1k``;
    ``reinitialized`` (the checkpoint's head had another shape; warned); ``fresh`` (the checkpoint
    has no head, e.g. SimMIM); ``dropped`` (the model has no head); ``none`` (neither has one)."""

    source: str
    layout: Layout
    loaded: list[str]  # target keys filled from the checkpoint
    dropped: list[str]  # checkpoint keys deliberately not used (canonical names)
    reinitialized: list[str]  # target keys that start fresh (head, SimMIM mask token / decoder)
    head: HeadAction
    head_classes: int | None = None  # classes of the checkpoint's head (None: it has none)

    def __str__(self) -> str:
        return (
            f"{self.source} ({self.layout} layout): {len(self.loaded)} tensors loaded, head {self.head}, "
            f"{len(self.dropped)} dropped, {len(self.reinitialized)} re-initialised"
        )


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown + (f" and {len(keys) - _MAX_NAMED} more" if len(keys) > _MAX_NAMED else "")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def read_checkpoint(path: str | Path) -> StateDict:
    """Read the state dict of a ``.safetensors`` file or a torch file (``.pth``/``.pt``/``.bin``).

    Torch files go through ``torch.load(weights_only=True)``: a file that pickles anything but
    tensors and plain containers is refused, never executed. Wrappers (``{'model': ...}``,
    ``{'state_dict': ...}``, ``{'module': ...}``) and DDP / torch.compile prefixes are removed.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path}: is a directory; pass the weights file inside it (e.g. model.safetensors)"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            obj = safetensors.torch.load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:  # not a weights-only refusal: just not a pickle
            raise CheckpointError(f"{path}: not a checkpoint ({_first_line(e)})") from e
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True) because it pickles {found[1]}; "
            "re-save only the state dict (torch.save(model.state_dict(), ...)) or convert it to .safetensors"
        ) from e
    except Exception as e:  # truncated zip, EOF, bad safetensors header, ...
        raise CheckpointError(
            f"{path}: not a readable checkpoint, the file may be truncated or corrupt ({_first_line(e)})"
        ) from e
    try:
        return unwrap_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def unwrap_state_dict(obj: object) -> StateDict:
    """The flat ``{name: tensor}`` dict inside a loaded checkpoint object."""
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"no state dict inside: expected tensors or one of {'/'.join(_WRAPPERS)} at the top level, "
                f"found keys {_named(sorted(map(str, obj)))}"
            )
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"not a state dict but {type(obj).__name__ if obj else 'an empty one'}")
    state = dict(obj)
    for prefix in _SAVE_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _downsample_stages(state: Mapping[str, torch.Tensor]) -> set[int]:
    return {int(m[1]) for k in state if (m := re.match(r"layers\.(\d+)\.downsample\.", k))}


def _is_timm(state: Mapping[str, torch.Tensor]) -> bool:
    # Official checkpoints (>= 2 stages) always merge after stage 0; timm never has a downsample there.
    stages = _downsample_stages(state)
    return "head.fc.weight" in state or (bool(stages) and 0 not in stages)


def detect_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """Which of the four layouts a flat state dict is in."""
    keys = list(state)
    if any(
        k.startswith(("swinv2.", "embeddings.patch_embeddings.")) or ".attention.self." in k for k in keys
    ):
        return "hf"
    if "mask_token" in state or any(k.startswith("encoder.") for k in keys):
        return "simmim"
    if _is_timm(state):
        return "timm"
    if any(k.startswith(("patch_embed.", "layers.")) for k in keys):
        return "official"
    raise CheckpointError(f"not a SwinV2 state dict: no layout matches keys {_named(keys)}")


def _shift_downsample(state: Mapping[str, torch.Tensor], by: int) -> StateDict:
    def rename(k: str) -> str:
        return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + by}.downsample.", k)

    return {rename(k): v for k, v in state.items()}


def _from_timm(state: Mapping[str, torch.Tensor]) -> StateDict:
    state = _shift_downsample(state, -1)
    return {re.sub(r"^head\.fc\.", "head.", k): v for k, v in state.items()}


def _to_timm(state: Mapping[str, torch.Tensor]) -> StateDict:
    state = _shift_downsample(state, +1)
    return {re.sub(r"^head\.", "head.fc.", k): v for k, v in state.items()}


def _from_simmim(state: Mapping[str, torch.Tensor]) -> StateDict:
    # "encoder.mask_token" (official SimMIM) becomes "mask_token" (our wrapper) on the way.
    inner = {k.removeprefix("encoder."): v for k, v in state.items()}
    return _from_timm(inner) if _is_timm(inner) else inner


# Applied in order to every Hugging Face key but query/key/value (merged below).
_HF_RENAMES = (
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^encoder\.layers\.", "layers."),
    (r"\.attention\.self\.continuous_position_bias_mlp\.", ".attn.cpb_mlp."),
    (r"\.attention\.self\.logit_scale$", ".attn.logit_scale"),
    (r"\.attention\.self\.query\.bias$", ".attn.q_bias"),
    (r"\.attention\.self\.value\.bias$", ".attn.v_bias"),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    # layernorm_before/after are applied *after* attention/MLP (post-norm) despite the names.
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
)
_HF_QKV = re.compile(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.weight")


def _from_hf(state: Mapping[str, torch.Tensor]) -> StateDict:
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        k = key.removeprefix("swinv2.")
        if m := _HF_QKV.fullmatch(k):
            qkv.setdefault((m[1], m[2]), {})[m[3]] = (key, value)
            continue
        for pattern, replacement in _HF_RENAMES:
            k = re.sub(pattern, replacement, k)
        out[k] = value
    for (stage, block), parts in qkv.items():
        if parts.keys() == {"query", "key", "value"}:
            out[f"layers.{stage}.blocks.{block}.attn.qkv.weight"] = torch.cat(
                [parts[p][1] for p in ("query", "key", "value")]
            )
        else:  # incomplete: keep the original names so that they are reported as unexpected
            out.update(dict(parts.values()))
    return out


_CONVERTERS: dict[Layout, Callable[[Mapping[str, torch.Tensor]], StateDict]] = {
    "official": dict,
    "simmim": _from_simmim,
    "timm": _from_timm,
    "hf": _from_hf,
}


def to_canonical(state: Mapping[str, torch.Tensor]) -> tuple[Layout, StateDict, list[str]]:
    """Convert a flat state dict in any layout to the canonical one.

    Returns (detected layout, canonical state dict, names of the dropped recomputed buffers)."""
    dropped = sorted(k for k in state if k.rsplit(".", 1)[-1] in _RECOMPUTED)
    state = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in _RECOMPUTED}
    layout = detect_layout(state)
    canonical = _CONVERTERS[layout](state)
    # Older SimMIM code (and fine-tunes made with it) names the CPB MLP rpe_mlp.
    return layout, {k.replace(".rpe_mlp.", ".cpb_mlp."): v for k, v in canonical.items()}, dropped


def _is_simmim_part(key: str) -> bool:
    return key == "mask_token" or key.startswith("decoder.")


def _match_head(head: nn.Module, state: StateDict, source: str) -> tuple[HeadAction, StateDict, list[str]]:
    """The checkpoint's head entries fitted to ``head``: (action, tensors to load, keys dropped)."""
    ckpt = {k: state[k] for k in ("head.weight", "head.bias") if k in state}
    if not isinstance(head, nn.Linear):
        return ("dropped" if ckpt else "none"), {}, sorted(ckpt)
    if not ckpt:
        return "fresh", {}, []
    weight = ckpt.get("head.weight")
    if weight is not None and weight.shape == head.weight.shape and set(ckpt) == {"head.weight", "head.bias"}:
        return "loaded", ckpt, []
    if (
        weight is not None
        and weight.shape == (NUM_CLASSES_22K, head.in_features)
        and head.out_features == NUM_CLASSES_1K
        and "head.bias" in ckpt
    ):
        rows = imagenet22k_to_1k_indices()
        return "sliced_22k_to_1k", {k: v[rows] for k, v in ckpt.items()}, []
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in ckpt.items())
    warnings.warn(
        f"{source}: the checkpoint's head ({shapes}) does not fit the model's "
        f"{tuple(head.weight.shape)}; the head is re-initialised",
        stacklevel=3,
    )
    return "reinitialized", {}, sorted(ckpt)


@torch.no_grad()
def _reinitialize(model: nn.Module, keys: list[str]) -> None:
    """Fresh values for the task-specific parts, as the models' own ``init_weights`` gives them."""
    for module_name in sorted({k.rpartition(".")[0] for k in keys}):
        module = model.get_submodule(module_name)
        if isinstance(module, nn.Linear):  # the head
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):  # the SimMIM decoder
            module.reset_parameters()
    if "mask_token" in keys:
        nn.init.trunc_normal_(model.get_parameter("mask_token"), std=0.02)


def load_pretrained(model: nn.Module, path_or_state_dict: str | Path | Mapping[str, object]) -> LoadReport:
    """Load a checkpoint in any of the four layouts into ``model`` (a ``SwinTransformerV2``
    classifier or a ``SimMIM`` wrapper), detecting the layout.

    - Position tables and shift masks are dropped and recomputed by the model.
    - Head: loaded if the shapes match; a 21841-class head is sliced to 1000 classes with the
      22k->1k map; any other shape re-initialises the head with a warning. A checkpoint without a
      head (SimMIM) gives a fresh head.
    - SimMIM mask token and decoder: loaded into a ``SimMIM`` target (fresh if the checkpoint has
      none), dropped for a classifier.
    - Any other missing, unexpected or mis-shaped key raises ``CheckpointError`` naming the keys.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        source = str(path_or_state_dict)
        raw = read_checkpoint(path_or_state_dict)
    else:
        source = "<state dict>"
        raw = unwrap_state_dict(path_or_state_dict)
    if isinstance(model, SimMIM):
        encoder, prefix = model.encoder, "encoder."
    elif isinstance(model, SwinTransformerV2):
        encoder, prefix = model, ""
    else:
        raise TypeError(f"load_pretrained expects a SwinTransformerV2 or SimMIM, got {type(model).__name__}")

    layout, state, dropped = to_canonical(raw)
    head_action, head_state, head_dropped = _match_head(encoder.head, state, source)
    dropped += head_dropped
    new = {prefix + k: v for k, v in state.items() if not k.startswith("head.") and not _is_simmim_part(k)}
    new.update({prefix + k: v for k, v in head_state.items()})
    target = model.state_dict()
    for k in filter(_is_simmim_part, state):
        if isinstance(model, SimMIM):
            # official SimMIM stores the token as (1, 1, C), our wrapper as (1, 1, 1, C)
            value = state[k]
            new[k] = value.reshape(target[k].shape) if value.numel() == target[k].numel() else value
        else:
            dropped.append(k)

    # Task-specific parts the checkpoint does not provide as a whole start fresh.
    groups = (prefix + "head.", "mask_token", "decoder.")
    fresh = [k for g in groups if not any(n.startswith(g) for n in new) for k in target if k.startswith(g)]
    missing = sorted(set(target) - set(new) - set(fresh))
    unexpected = sorted(set(new) - set(target))
    misshaped = sorted(
        f"{k} {tuple(new[k].shape)} vs {tuple(target[k].shape)}"
        for k in set(new) & set(target)
        if new[k].shape != target[k].shape
    )
    problems = [
        f"{label} keys ({len(keys)}): {_named(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{source} ({layout} layout) does not fit {type(model).__name__}: {'; '.join(problems)}"
        )
    result = model.load_state_dict(new, strict=False)
    assert set(result.missing_keys) == set(fresh) and not result.unexpected_keys, result
    _reinitialize(model, fresh)
    return LoadReport(
        source=source,
        layout=layout,
        loaded=sorted(new),
        dropped=sorted(dropped),
        reinitialized=fresh,
        head=head_action,
        head_classes=state["head.weight"].shape[0] if "head.weight" in state else None,
    )


def export_weights(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    layout: Literal["official", "timm"] = "official",
) -> Path:
    """Write the encoder's weights (and head) to a ``.safetensors`` file in the official or timm
    layout. A state dict in any layout is accepted. SimMIM's mask token and decoder are
    pretraining-only and are left out, so the file loads into timm and into ``load_pretrained``."""
    if layout not in ("official", "timm"):
        raise ValueError(f"layout={layout!r}; choose 'official' or 'timm'")
    source = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    _, state, _ = to_canonical(unwrap_state_dict(source))
    state = {k: v for k, v in state.items() if not _is_simmim_part(k)}
    if layout == "timm":
        state = _to_timm(state)
    path = Path(path)
    safetensors.torch.save_file(
        {k: v.detach().cpu().contiguous() for k, v in state.items()},
        path,
        metadata={"format": "pt", "layout": layout},
    )
    return path
