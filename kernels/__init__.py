"""Triton kernels of the specmoe engine, each with a plain-torch reference beside it.

Import functions from their modules, e.g. `from specmoe.kernels.rmsnorm import rmsnorm`
(a module and its main function share a name, so package-level names would be ambiguous).
Set TRITON_INTERPRET=1 before importing them to run on CPU tensors under the Triton interpreter.

    moe_align   moe_align_block_size, MoEAlignment   token-to-expert alignment to the block size
    fused_moe   fused_moe, nonresident_mask          grouped expert GEMM, SwiGLU, slot indirection
    moe_config  get_fused_moe_config                 tile configs, per-device JSON in configs/
    moe_tune    tune_fused_moe                       measuring them on a device
    gating      topk_gating                          softmax/sigmoid top-k routing
    rmsnorm     rmsnorm                              RMSNorm with fused residual add
    rope        rope                                 rotary embeddings (rotate-half)
    attention   attention                            decode/verify attention over a static KV cache
Each has a `*_reference` in plain torch.
"""
