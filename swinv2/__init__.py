"""SwinV2 model library: the network, its named variants, SimMIM, and checkpoint conversion."""

from .attention import ATTN_IMPLS, WindowAttention
from .model import PatchEmbed, PatchMerging, SwinTransformerV2, SwinTransformerV2Block, SwinTransformerV2Stage
from .registry import VARIANTS, build_model, list_models, model_config
from .simmim import SimMIM, normalize_targets
from .weights import CheckpointError, LoadReport, export_weights, load_pretrained

__all__ = [
    "ATTN_IMPLS",
    "VARIANTS",
    "CheckpointError",
    "LoadReport",
    "PatchEmbed",
    "PatchMerging",
    "SimMIM",
    "SwinTransformerV2",
    "SwinTransformerV2Block",
    "SwinTransformerV2Stage",
    "WindowAttention",
    "build_model",
    "export_weights",
    "list_models",
    "load_pretrained",
    "model_config",
    "normalize_targets",
]
