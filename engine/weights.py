"""Weights: Hugging Face safetensors (Mixtral, Qwen2/3-MoE layouts) or random init at any shape.

Dense (non-expert) tensors get short canonical names ("embed", "layers.3.wq", ...). Expert weights
go straight into one host buffer per layer, [experts, 3*ffn*hidden], each expert's row laid out
w1 (gate, [ffn, hidden]) | w3 (up, [ffn, hidden]) | w2 (down, [hidden, ffn]); the expert store
copies a row into a GPU slot with one transfer.
"""
from __future__ import annotations

import contextlib
import json
import math
import mmap
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from specmoe.engine.config import LAYOUTS, MoEConfig

from specmoe.errors import SpecMoEError

EXPERT_PARTS = ("w1", "w3", "w2")
# canonical dense name (per layer) -> HF suffix after "model.layers.{l}."
_DENSE_LAYER = {
    "attn_norm": "input_layernorm.weight", "mlp_norm": "post_attention_layernorm.weight",
    "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
    "bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias",
    "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
}
_MOE = {
    "mixtral": {"gate": "block_sparse_moe.gate.weight",
                "expert": "block_sparse_moe.experts.{e}.{part}.weight",
                "parts": {"w1": "w1", "w3": "w3", "w2": "w2"}},
    "qwen_moe": {"gate": "mlp.gate.weight", "expert": "mlp.experts.{e}.{part}.weight",
                 "parts": {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"},
                 "shared_w1": "mlp.shared_expert.gate_proj.weight",
                 "shared_w3": "mlp.shared_expert.up_proj.weight",
                 "shared_w2": "mlp.shared_expert.down_proj.weight",
                 "shared_gate": "mlp.shared_expert_gate.weight"},
}


@dataclass
class Weights:
    cfg: MoEConfig
    dense: dict[str, torch.Tensor]      # canonical name -> tensor (host, or the init device)
    experts: list[torch.Tensor]         # per layer [experts, 3*ffn*hidden] (host; pinned for CUDA)

    def pin(self) -> Weights:
        """Page-lock the expert buffers so H2D copies run asynchronously at full bandwidth: the
        flat host allocation they live in is registered in place (one cudaHostRegister), else they
        are copied into a new pinned one."""
        if all(b.is_pinned() for b in self.experts):
            return self
        arena = arena_of(self.experts)
        if arena is not None:
            arena.pin()
            return self
        bufs = expert_buffers(self.cfg)
        for dst, src in zip(bufs, self.experts):
            dst.copy_(src)
        arena_of(bufs).pin()
        self.experts = bufs
        return self


# ----------------------------------------------------------------------------- host expert memory


class HostArena(mmap.mmap):
    """One anonymous, page-aligned host allocation for every layer's expert buffer.

    PyTorch's pinned (caching host) allocator rounds each request up to a power of two: a 2.8 GB
    Mixtral layer would take 4 GiB, 32 layers 128 GiB. This allocation has exactly the bytes asked
    (rounded to a page) and is page-locked in place with one cudaHostRegister; it is unregistered
    when the last tensor viewing it is gone."""

    def pin(self) -> None:
        if getattr(self, "pinned", False):
            return
        _cuda_host_register(self.ptr, len(self))
        self.pinned = True
        weakref.finalize(self, _cuda_host_unregister, self.ptr)

    def tensor(self, dtype: torch.dtype) -> torch.Tensor:
        t = torch.frombuffer(self, dtype=dtype)
        self.ptr = t.data_ptr()
        return t


_ARENAS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # flat data_ptr -> arena


def expert_buffers(cfg: MoEConfig, pin: bool = False) -> list[torch.Tensor]:
    """Per layer [experts, expert_params] views into one flat HostArena (pinned if `pin`)."""
    per_layer = cfg.experts * cfg.expert_params
    nbytes = max(1, cfg.layers * per_layer * cfg.torch_dtype.itemsize)
    arena = HostArena(-1, -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE)
    flat = arena.tensor(cfg.torch_dtype)
    _ARENAS[arena.ptr] = arena
    if pin:
        arena.pin()
    return [flat[l * per_layer:(l + 1) * per_layer].view(cfg.experts, cfg.expert_params)
            for l in range(cfg.layers)]


def arena_of(bufs: list[torch.Tensor]) -> HostArena | None:
    """The HostArena the buffers are views of (all of them), else None."""
    if not bufs or bufs[0].device.type != "cpu":
        return None
    ptr = bufs[0].untyped_storage().data_ptr()
    arena = _ARENAS.get(ptr)
    same = arena is not None and all(b.untyped_storage().data_ptr() == ptr for b in bufs)
    return arena if same else None


def _cuda_host_register(ptr: int, nbytes: int) -> None:
    torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(ptr, nbytes, 0))


def _cuda_host_unregister(ptr: int) -> None:
    with contextlib.suppress(Exception):  # at interpreter exit CUDA may already be gone
        torch.cuda.cudart().cudaHostUnregister(ptr)


def dense_shapes(cfg: MoEConfig) -> dict[str, tuple[int, ...]]:
    """Every dense tensor the model needs and its shape."""
    h, q, kv = cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"embed": (cfg.vocab, h), "norm": (h,)}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (cfg.vocab, h)
    for l in range(cfg.layers):
        p = f"layers.{l}."
        shapes.update(
            {
                p + "attn_norm": (h,),
                p + "mlp_norm": (h,),
                p + "wq": (q, h),
                p + "wk": (kv, h),
                p + "wv": (kv, h),
                p + "wo": (h, q),
                p + "gate": (cfg.experts, h),
            }
        )
        if cfg.qkv_bias:
            shapes.update({p + "bq": (q,), p + "bk": (kv,), p + "bv": (kv,)})
        if cfg.qk_norm:
            shapes.update({p + "q_norm": (cfg.head_dim,), p + "k_norm": (cfg.head_dim,)})
        if cfg.shared_expert_ffn:
            s = cfg.shared_expert_ffn
            shapes.update(
                {
                    p + "shared_w1": (s, h),
                    p + "shared_w3": (s, h),
                    p + "shared_w2": (h, s),
                    p + "shared_gate": (1, h),
                }
            )
    return shapes


def expert_shapes(cfg: MoEConfig) -> dict[str, tuple[int, int]]:
    return {"w1": (cfg.expert_ffn, cfg.hidden), "w3": (cfg.expert_ffn, cfg.hidden),
            "w2": (cfg.hidden, cfg.expert_ffn)}


def hf_name(cfg: MoEConfig, name: str) -> str:
    """The Hugging Face tensor name of a canonical dense name."""
    if name == "embed":
        return "model.embed_tokens.weight"
    if name == "norm":
        return "model.norm.weight"
    if name == "lm_head":
        return "lm_head.weight"
    _, l, key = name.split(".", 2)
    suffix = _DENSE_LAYER.get(key) or _MOE[cfg.layout][key]
    return f"model.layers.{l}.{suffix}"


def hf_expert_name(cfg: MoEConfig, layer: int, expert: int, part: str) -> str:
    m = _MOE[cfg.layout]
    return f"model.layers.{layer}." + m["expert"].format(e=expert, part=m["parts"][part])


# ----------------------------------------------------------------------------- random init


def random_model(cfg: MoEConfig, seed: int = 0, pin: bool = False,
                 init_device: str | torch.device | None = None) -> Weights:
    """Random weights at any shape. Linear weights ~ U(±sqrt(3/fan_in)) (unit variance outputs), so
    logits are O(1) and routing is far from uniform: useful for tests and timing at real shapes.

    init_device="cuda": draw on the GPU (seconds instead of a minute of CPU time at Mixtral
    shapes), dense weights stay there, expert weights are copied layer by layer into the (pinned)
    host buffers. Other values than the CPU's for the same seed."""
    dev = torch.device(init_device or "cpu")
    g = torch.Generator(device=dev).manual_seed(seed)
    dt = cfg.torch_dtype
    dense = {}
    for name, shape in dense_shapes(cfg).items():
        key = name.rsplit(".", 1)[-1]
        if key.endswith("norm"):
            dense[name] = (1.0 + 0.1 * _uniform(shape, 1.0, g, torch.float32, dev)).to(dt)
        elif key == "embed":
            dense[name] = _uniform(shape, 1.0, g, dt, dev)
        elif key.startswith("b"):
            dense[name] = _uniform(shape, 0.1, g, dt, dev)
        else:
            dense[name] = _uniform(shape, 1.0 / math.sqrt(shape[-1]), g, dt, dev)
    experts = expert_buffers(cfg, pin=pin)
    for buf in experts:
        if dev.type == "cpu":
            _fill_uniform(buf, g, cfg)
            continue
        tmp = torch.empty(buf.shape, dtype=dt, device=dev)
        _fill_uniform(tmp, g, cfg)
        buf.copy_(tmp, non_blocking=pin)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return Weights(cfg, dense, experts)


def _uniform(shape, std: float, g: torch.Generator, dtype: torch.dtype,
             device: torch.device | None = None) -> torch.Tensor:
    a = math.sqrt(3.0) * std
    return torch.empty(shape, dtype=torch.float32, device=device).uniform_(
        -a, a, generator=g).to(dtype)


def _fill_uniform(buf: torch.Tensor, g: torch.Generator, cfg: MoEConfig) -> None:
    i, h = cfg.expert_ffn, cfg.hidden
    a13, a2 = math.sqrt(3.0 / h), math.sqrt(3.0 / i)
    buf[:, : 2 * i * h].uniform_(-a13, a13, generator=g)
    buf[:, 2 * i * h:].uniform_(-a2, a2, generator=g)


# ----------------------------------------------------------------------------- safetensors


def load_weights(path: str | Path, layers: int | None = None, pin: bool = False,
                 dtype: str | None = None, **cfg_overrides) -> Weights:
    """Load a directory with config.json and *.safetensors (one file or an index).

    layers: load only the first `layers` layers (timing at real shapes on a smaller GPU/host).
    """
    from safetensors import safe_open

    root = Path(path)
    cfg_path = root / "config.json"
    if not cfg_path.exists():
        raise SpecMoEError(f"weights directory {root}: no config.json")
    hf = json.loads(cfg_path.read_text())
    if hf.get("model_type") not in LAYOUTS:
        raise SpecMoEError(
            f"{cfg_path}: unknown weight layout model_type={hf.get('model_type')!r}; "
            f"allowed {list(LAYOUTS)}"
        )
    if layers is not None:
        cfg_overrides["layers"] = layers
    if dtype is not None:
        cfg_overrides["dtype"] = dtype
    cfg = MoEConfig.from_hf(hf, **cfg_overrides)
    files = _shard_files(root)
    index = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            index.update(dict.fromkeys(sf.keys(), f))
    _check_layout(cfg, index, root)
    wanted = {name: hf_name(cfg, name) for name in dense_shapes(cfg)}
    wanted_experts = {(l, e, p): hf_expert_name(cfg, l, e, p) for l in range(cfg.layers)
                      for e in range(cfg.experts) for p in EXPERT_PARTS}
    missing = [n for n in list(wanted.values()) + list(wanted_experts.values()) if n not in index]
    if missing:
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        raise SpecMoEError(f"{root}: missing tensors {missing[:8]}{more}")
    return _read(cfg, index, wanted, wanted_experts, pin)


def _shard_files(root: Path) -> list[Path]:
    idx = root / "model.safetensors.index.json"
    if idx.exists():
        names = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        files = [root / n for n in names]
        absent = [str(f) for f in files if not f.exists()]
        if absent:
            raise SpecMoEError(f"{idx} names shard files that do not exist: {absent}")
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise SpecMoEError(f"weights directory {root}: no *.safetensors files")
    return files


def _check_layout(cfg: MoEConfig, index: dict, root: Path) -> None:
    """The tensors must follow the layout the config names; say what was found otherwise."""
    marker = {"mixtral": ".block_sparse_moe.", "qwen_moe": ".mlp.experts."}[cfg.layout]
    if not any(marker in k for k in index):
        sample = sorted(k for k in index if ".layers.0." in k)[:6] or sorted(index)[:6]
        raise SpecMoEError(f"{root}: unknown weight layout for {cfg.layout!r} (expected tensors "
                           f"containing {marker!r}); found e.g. {sample}")


def _read(cfg: MoEConfig, index: dict, wanted: dict, wanted_experts: dict, pin: bool) -> Weights:
    from safetensors import safe_open

    dt = cfg.torch_dtype
    shapes, eshapes = dense_shapes(cfg), expert_shapes(cfg)
    experts = expert_buffers(cfg, pin=pin)
    offsets = {"w1": 0, "w3": cfg.expert_ffn * cfg.hidden, "w2": 2 * cfg.expert_ffn * cfg.hidden}
    dense: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list] = {}
    for name, hfn in wanted.items():
        by_file.setdefault(index[hfn], []).append(("dense", name, hfn))
    for key, hfn in wanted_experts.items():
        by_file.setdefault(index[hfn], []).append(("expert", key, hfn))
    for f, items in by_file.items():
        with safe_open(str(f), framework="pt") as sf:
            for kind, key, hfn in items:
                t = sf.get_tensor(hfn)
                if kind == "dense":
                    _check_shape(hfn, t, shapes[key])
                    dense[key] = t.to(dt)
                else:
                    l, e, part = key
                    _check_shape(hfn, t, eshapes[part])
                    n = t.numel()
                    experts[l][e, offsets[part]: offsets[part] + n].copy_(t.reshape(-1))
    return Weights(cfg, dense, experts)


def _check_shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    if tuple(t.shape) != tuple(expected):
        raise SpecMoEError(f"tensor {name}: shape {list(t.shape)} does not match the config, "
                           f"expected {list(expected)}")


def save_weights(w: Weights, path: str | Path, hf_config: dict | None = None) -> Path:
    """Write weights in the Hugging Face layout of w.cfg (tests, and to ship random models)."""
    from safetensors.torch import save_file

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    cfg = w.cfg
    out = {hf_name(cfg, k): v.contiguous() for k, v in w.dense.items()}
    i, h = cfg.expert_ffn, cfg.hidden
    for l, buf in enumerate(w.experts):
        for e in range(cfg.experts):
            row = buf[e]
            out[hf_expert_name(cfg, l, e, "w1")] = row[: i * h].view(i, h).clone()
            out[hf_expert_name(cfg, l, e, "w3")] = row[i * h: 2 * i * h].view(i, h).clone()
            out[hf_expert_name(cfg, l, e, "w2")] = row[2 * i * h:].view(h, i).clone()
    save_file(out, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(hf_config or to_hf_config(cfg), indent=1))
    return root


def to_hf_config(cfg: MoEConfig) -> dict:
    """A config.json dict that MoEConfig.from_hf reads back to cfg (up to max_seq_len/batch)."""
    common = {"hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers,
                  "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
                  "head_dim": cfg.head_dim, "vocab_size": cfg.vocab, "rope_theta": cfg.rope_theta,
                  "rms_norm_eps": cfg.rms_eps, "tie_word_embeddings": cfg.tie_embeddings,
                  "num_experts_per_tok": cfg.top_k, "torch_dtype": cfg.dtype,
                  "max_position_embeddings": cfg.max_seq_len}
    if cfg.layout == "mixtral":
        return dict(model_type="mixtral", num_local_experts=cfg.experts,
                    intermediate_size=cfg.expert_ffn, **common)
    if cfg.qk_norm:
        return dict(
            model_type="qwen3_moe",
            num_experts=cfg.experts,
            moe_intermediate_size=cfg.expert_ffn,
            norm_topk_prob=cfg.norm_topk_prob,
            **common,
        )
    return dict(
        model_type="qwen2_moe",
        num_experts=cfg.experts,
        moe_intermediate_size=cfg.expert_ffn,
        norm_topk_prob=cfg.norm_topk_prob,
        qkv_bias=cfg.qkv_bias,
        shared_expert_intermediate_size=cfg.shared_expert_ffn,
        **common,
    )
