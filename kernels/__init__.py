"""Triton kernels of the specmoe engine, each with a plain-torch reference beside it.

Import the modules (or these names, loaded on first use) after setting TRITON_INTERPRET=1 if the
kernels are to run on CPU tensors under the Triton interpreter; see _runtime.
"""

import importlib

_EXPORTS = {
    "fused_moe": "fused_moe", "fused_moe_reference": "fused_moe", "nonresident_mask": "fused_moe",
    "moe_align_block_size": "moe_align", "moe_align_block_size_reference": "moe_align",
    "MoEAlignment": "moe_align",
    "get_fused_moe_config": "moe_config", "tune_fused_moe": "moe_config",
    "topk_gating": "gating", "topk_gating_reference": "gating",
    "rmsnorm": "rmsnorm", "rmsnorm_reference": "rmsnorm",
    "rope": "rope", "rope_reference": "rope",
    "attention": "attention", "attention_reference": "attention",
}
__all__ = [  # noqa: RUF022 - grouped by module, as _EXPORTS
    "fused_moe",
    "fused_moe_reference",
    "nonresident_mask",
    "moe_align_block_size",
    "moe_align_block_size_reference",
    "MoEAlignment",
    "get_fused_moe_config",
    "tune_fused_moe",
    "topk_gating",
    "topk_gating_reference",
    "rmsnorm",
    "rmsnorm_reference",
    "rope",
    "rope_reference",
    "attention",
    "attention_reference",
]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
