"""Train a tiny Mixtral-layout MoE language model on the Python standard library's sources.

The model gives specmoe real routing statistics and real speculative-decoding acceptance rates at a
size that trains on a 2-core CPU in about half an hour. Everything is saved exactly in the Hugging
Face Mixtral layout (config.json, model.safetensors with HF tensor names, tokenizer.json), so any
Mixtral loader reads it.

This file is also the one home of the model's torch forward (`TinyMixtral`), its loader
(`load_pretrained`), the tokenizer loader and the data split: routing_stats.py and the tests import
them from here instead of copying them.

    python experiments/train_tiny_moe.py --steps 700                 # CPU, resumes if interrupted
    python experiments/train_tiny_moe.py --device cuda --steps 700   # GPU, bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "tiny_moe"
DEFAULT_WORK = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "specmoe" / "tiny_moe"
)
STDLIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Mixtral's tokenizer
BOS_ID, EOS_ID = 1, 2


# ----------------------------------------------------------------------------- model


@dataclass
class TinyMoEConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 256  # per expert
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 32
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    router_aux_loss_coef: float = 0.02
    initializer_range: float = 0.02

    def to_hf(self) -> dict:
        """config.json as Hugging Face MixtralConfig writes it (keys of transformers 4.x and
        5.x)."""
        return {
            "architectures": ["MixtralForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": BOS_ID,
            "dtype": "bfloat16",
            "eos_token_id": EOS_ID,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": self.initializer_range,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "mixtral",
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_local_experts,
            "output_router_logits": False,
            "pad_token_id": None,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": self.router_aux_loss_coef,
            "router_jitter_noise": 0.0,
            "sliding_window": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_hf(cls, d: dict) -> TinyMoEConfig:
        if d.get("model_type") != "mixtral":
            raise ValueError(
                f"config model_type={d.get('model_type')!r}; only 'mixtral' is allowed"
            )
        theta = d.get("rope_theta") or (d.get("rope_parameters") or {}).get("rope_theta")
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "rope_theta"}
        heads = fields.get("num_attention_heads", cls.num_attention_heads)
        fields.setdefault("head_dim", d["hidden_size"] // heads)
        return cls(**fields, rope_theta=float(theta if theta is not None else 1e6))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """cos/sin [T, head_dim] in the HF rotate-half convention (frequencies repeated, not
    interleaved)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: TinyMoEConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, c.hidden_size, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # HF repeat_kv: kv head j serves query heads j*rep .. (j+1)*rep-1
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.nh * self.hd))


class Expert(nn.Module):
    """SwiGLU expert in Mixtral naming: w2(silu(w1 x) * w3 x)."""

    def __init__(self, c: TinyMoEConfig):
        super().__init__()
        self.w1 = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.w2 = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)
        self.w3 = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    """Mixtral block: softmax over all experts, keep top-k, renormalise over the kept k."""

    def __init__(self, c: TinyMoEConfig):
        super().__init__()
        self.top_k = c.num_experts_per_tok
        self.gate = nn.Linear(c.hidden_size, c.num_local_experts, bias=False)
        self.experts = nn.ModuleList(Expert(c) for _ in range(c.num_local_experts))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.gate(x)
        probs = F.softmax(logits.float(), dim=-1)
        top_w, top_i = torch.topk(probs, self.top_k, dim=-1)
        top_w = (top_w / top_w.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(top_i == e)
            if tok.numel():
                y = expert(x[tok]) * top_w[tok, slot, None]
                out.index_add_(0, tok, y.to(out.dtype))
        return out.view(shape), logits, top_i


class DecoderLayer(nn.Module):
    def __init__(self, c: TinyMoEConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.block_sparse_moe = SparseMoE(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        h, logits, top_i = self.block_sparse_moe(self.post_attention_layernorm(x))
        return x + h, logits, top_i


class TinyMixtral(nn.Module):
    """Decoder MoE whose state_dict keys and shapes are those of HF MixtralForCausalLM."""

    def __init__(self, c: TinyMoEConfig):
        super().__init__()
        self.config = c
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.model.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_weights(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                nn.init.ones_(p)
            else:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * self.config.initializer_range)

    def forward(self, ids: torch.Tensor, with_routing: bool = False):
        """ids [B, T] -> logits [B, T, V]; with_routing also returns per-layer (router logits, top-k
        ids)."""
        c = self.config
        if ids.shape[1] > c.max_position_embeddings:
            raise ValueError(
                f"sequence length {ids.shape[1]} > max_position_embeddings "
                f"{c.max_position_embeddings}"
            )
        cos, sin = rope_cos_sin(
            torch.arange(ids.shape[1], device=ids.device), c.head_dim, c.rope_theta
        )
        x = self.model.embed_tokens(ids)
        routing = []
        for layer in self.model.layers:
            x, logits, top_i = layer(x, cos, sin)
            routing.append((logits, top_i))
        logits = self.lm_head(self.model.norm(x))
        return (logits, routing) if with_routing else logits


def load_balancing_loss(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch/Mixtral auxiliary loss for one layer, as HF's load_balancing_loss_func:
    E * sum_e f_e P_e.

    f_e = top-k assignments to e per token, P_e = mean router probability; equals top_k when
    balanced.
    """
    probs = F.softmax(router_logits.float(), dim=-1)
    n, n_exp = probs.shape
    top_i = torch.topk(probs, top_k, dim=-1).indices
    f = (
        torch.zeros(n_exp, device=probs.device).scatter_add_(
            0, top_i.reshape(-1), torch.ones(top_i.numel(), device=probs.device)
        )
        / n
    )
    return n_exp * torch.sum(f * probs.mean(0))


@torch.no_grad()
def greedy_generate(model: TinyMixtral, ids: list[int], n_new: int) -> list[int]:
    """Greedy continuation without a KV cache (recomputes the prefix; fine at this size)."""
    dev = next(model.parameters()).device
    out = list(ids)
    for _ in range(n_new):
        ctx = out[-model.config.max_position_embeddings :]
        logits = model(torch.tensor([ctx], device=dev))
        out.append(int(logits[0, -1].argmax()))
    return out[len(ids) :]


def hf_state_dict(model: TinyMixtral, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")  # HF drops the tied copy
    return sd


def load_pretrained(path: str | Path = DEFAULT_OUT, device: str = "cpu", dtype=torch.float32):
    """(TinyMixtral, TinyMoEConfig) from a HF Mixtral directory (config.json +
    model.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} is missing; train with experiments/train_tiny_moe.py"
            )
    cfg = TinyMoEConfig.from_hf(json.loads((path / "config.json").read_text()))
    model = TinyMixtral(cfg)
    sd = load_file(str(path / "model.safetensors"))
    if cfg.tie_word_embeddings:
        sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    return model.to(device).eval(), cfg


def hf_parity(path: str | Path = DEFAULT_OUT, seq_len: int = 128, seed: int = 0) -> float:
    """Max |logit difference| between this forward and transformers' MixtralForCausalLM on the
    same saved weights (both fp32, eager attention). Needs `transformers`; nothing else does."""
    from transformers import MixtralForCausalLM

    hf = MixtralForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    )
    mine, cfg = load_pretrained(path)
    ids = torch.randint(
        3, cfg.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return float((hf.eval()(ids).logits - mine(ids)).abs().max())


# ----------------------------------------------------------------------------- data + tokenizer


def stdlib_files(root: Path = STDLIB) -> list[Path]:
    """The standard library's .py files, without test suites and site-packages, in sorted order."""
    if not root.is_dir():
        raise FileNotFoundError(f"standard library directory {root} not found (set --stdlib)")
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if not SKIP_DIRS.intersection(rel[:-1]):
            files.append(p)
    return files


def split_files(files: list[Path], heldout_frac: float, seed: int):
    """Split by file (never inside one) with a seeded permutation: (train, heldout), each sorted."""
    perm = np.random.default_rng(seed).permutation(len(files))
    n_held = max(1, round(heldout_frac * len(files)))
    held = sorted(files[i] for i in perm[:n_held])
    train = sorted(files[i] for i in perm[n_held:])
    return train, held


def read_texts(files: list[Path]) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style pre-tokenisation) with Mixtral's special ids 0/1/2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def load_tokenizer(path: str | Path = DEFAULT_OUT):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(path) / "tokenizer.json"))


def encode_docs(tok, texts: list[str]) -> np.ndarray:
    """One token stream: <s> doc </s> <s> doc </s> ..."""
    parts = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        parts.append(np.asarray([BOS_ID, *enc.ids, EOS_ID], dtype=np.uint16))
    return np.concatenate(parts)


def heldout_windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows [N, seq_len] (the tail shorter than a window is dropped)."""
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len).astype(np.int64)


def write_tokenizer_files(tok, out: Path, cfg: TinyMoEConfig):
    """tokenizer.json (+ HF side files); encode(..., add_special_tokens=True) prepends <s> as
    Mixtral's does."""
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": cfg.max_position_embeddings,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n"
    )


def prepare_data(args) -> dict:
    """Tokenizer + token streams, cached in the work dir so a restart does not redo them."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    meta_path = work / "data_meta.json"
    if meta_path.is_file() and (work / "tokenizer.json").is_file():
        return json.loads(meta_path.read_text())
    root = Path(args.stdlib)
    train_f, held_f = split_files(stdlib_files(root), args.heldout_frac, args.seed)
    train_t, held_t = read_texts(train_f), read_texts(held_f)
    t0 = time.time()
    tok = train_tokenizer(train_t, args.vocab_size)
    tok.save(str(work / "tokenizer.json"))
    train_s, held_s = encode_docs(tok, train_t), encode_docs(tok, held_t)
    np.save(work / "train.npy", train_s)
    np.save(work / "heldout.npy", held_s)
    meta = {
        "stdlib_root": str(root),
        "seed": args.seed,
        "heldout_frac": args.heldout_frac,
        "excluded_dirs": sorted(SKIP_DIRS),
        "train_files": [str(p.relative_to(root)) for p in train_f],
        "heldout_files": [str(p.relative_to(root)) for p in held_f],
        "train_bytes": sum(len(t.encode()) for t in train_t),
        "heldout_bytes": sum(len(t.encode()) for t in held_t),
        "train_tokens": len(train_s),
        "heldout_tokens": len(held_s),
        "vocab_size": tok.get_vocab_size(),
        "tokenizer_seconds": round(time.time() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


# ----------------------------------------------------------------------------- baselines


def ngram_baselines(train: np.ndarray, windows: np.ndarray, vocab: int) -> dict:
    """Held-out cross-entropy (nats/token) of add-one unigram and interpolated bigram models, on
    exactly the targets the LM is scored on (positions 1.. of each window)."""
    uni = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    uni /= uni.sum()
    prev, tgt = windows[:, :-1].reshape(-1), windows[:, 1:].reshape(-1)
    ce_uni = float(-np.log(uni[tgt]).mean())
    pair = train[:-1].astype(np.int64) * vocab + train[1:]
    keys, counts = np.unique(pair, return_counts=True)
    ctx = np.bincount(train[:-1], minlength=vocab).astype(np.float64)
    q = prev * vocab + tgt
    pos = np.searchsorted(keys, q)
    pos = np.minimum(pos, len(keys) - 1)
    c_pair = np.where(keys[pos] == q, counts[pos], 0).astype(np.float64)
    p_bi = np.divide(c_pair, ctx[prev], out=np.zeros_like(c_pair), where=ctx[prev] > 0)
    # λ picked on the held-out set itself: flatters the baseline, so the comparison is conservative
    best = min(
        (float(-np.log(lam * p_bi + (1 - lam) * uni[tgt]).mean()), lam)
        for lam in np.linspace(0.05, 0.95, 19)
    )
    return {
        "unigram_ce": ce_uni,
        "bigram_ce": best[0],
        "bigram_lambda": round(best[1], 2),
        "targets": len(tgt),
    }


# ----------------------------------------------------------------------------- training


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (
        args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac))
    )


def batch_for_step(stream: np.ndarray, step: int, args) -> torch.Tensor:
    """Random windows; the generator is seeded by (seed, step) so order survives a restart."""
    rng = np.random.default_rng([args.seed, step])
    starts = rng.integers(0, len(stream) - args.seq_len, size=args.batch)
    return torch.from_numpy(
        np.stack([stream[s : s + args.seq_len] for s in starts]).astype(np.int64)
    )


def make_optimizer(model: TinyMixtral, args):
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def step_loss(model, ids, device):
    with autocast(device):
        logits, routing = model(ids[:, :-1], with_routing=True)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        k = model.config.num_experts_per_tok
        aux = torch.stack([load_balancing_loss(lg, k) for lg, _ in routing]).mean()
    return ce, aux


@torch.no_grad()
def evaluate(model, windows: np.ndarray, device: str, batch: int = 16) -> dict:
    """Mean held-out cross-entropy and per-layer expert usage (fraction of top-k slots)."""
    model.eval()
    tot, n = 0.0, 0
    c = model.config
    usage = torch.zeros(c.num_hidden_layers, c.num_local_experts, dtype=torch.float64)
    for i in range(0, len(windows), batch):
        ids = torch.from_numpy(windows[i : i + batch]).to(device)
        with autocast(device):
            logits, routing = model(ids, with_routing=True)
        ce = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            ids[:, 1:].reshape(-1),
            reduction="sum",
        )
        tot += float(ce)
        n += ids[:, 1:].numel()
        for layer, (_, top_i) in enumerate(routing):
            usage[layer] += torch.bincount(top_i.reshape(-1).cpu(), minlength=c.num_local_experts)
    model.train()
    usage /= usage.sum(1, keepdim=True)
    return {"loss": tot / n, "tokens": n, "usage": usage.tolist()}


def save_checkpoint(path: Path, model, opt, step: int, train_seconds: float):
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "train_seconds": train_seconds,
        },
        tmp,
    )
    os.replace(tmp, path)


def log(fh, **rec):
    line = json.dumps(rec)
    print(line, flush=True)
    fh.write(line + "\n")
    fh.flush()


def train(args):
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    work, out = Path(args.workdir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = prepare_data(args)
    train_s = np.load(work / "train.npy")
    held = heldout_windows(np.load(work / "heldout.npy"), args.seq_len)
    cfg = TinyMoEConfig(
        vocab_size=meta["vocab_size"],
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        num_local_experts=args.experts,
        num_experts_per_tok=args.top_k,
        max_position_embeddings=args.seq_len,
        router_aux_loss_coef=args.aux_coef,
        tie_word_embeddings=args.tie,
    )
    model = TinyMixtral(cfg)
    model.init_weights(args.seed)
    model.to(args.device).train()
    opt = make_optimizer(model, args)
    ckpt = work / "ckpt.pt"
    step, train_seconds = 0, 0.0
    if ckpt.is_file() and not args.fresh:
        state = torch.load(ckpt, map_location=args.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, train_seconds = state["step"], state["train_seconds"]
    with open(out / "train_log.jsonl", "a" if step else "w") as fh:
        log(
            fh,
            event="start",
            step=step,
            device=args.device,
            threads=torch.get_num_threads(),
            params=sum(p.numel() for p in model.parameters()),
            args=vars(args),
            train_tokens=meta["train_tokens"],
            heldout_tokens=meta["heldout_tokens"],
        )
        step, train_seconds = run_steps(model, opt, train_s, held, step, train_seconds, args, fh)
        finish(model, cfg, meta, held, train_s, args, step, train_seconds, fh)


def run_steps(model, opt, train_s, held, step, train_seconds, args, fh):
    """Optimiser steps from `step` to args.steps (or the time limit); returns (step, seconds)."""
    ckpt = Path(args.workdir) / "ckpt.pt"
    last_ckpt = time.time()
    while step < args.steps:
        if train_seconds > args.max_train_seconds:
            log(fh, event="time_limit", step=step, train_seconds=round(train_seconds, 1))
            break
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        ids = batch_for_step(train_s, step, args).to(args.device)
        ce, aux = step_loss(model, ids, args.device)
        opt.zero_grad(set_to_none=True)
        (ce + args.aux_coef * aux).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        train_seconds += time.time() - t0
        if step % args.log_every == 0 or step == args.steps:
            log(
                fh,
                step=step,
                ce=round(ce.item(), 4),
                aux=round(aux.item(), 4),
                lr=round(lr_at(step - 1, args), 6),
                gnorm=round(float(gnorm), 3),
                train_seconds=round(train_seconds, 1),
                tok_per_s=round(ids[:, 1:].numel() / (time.time() - t0)),
            )
        if step % args.eval_every == 0 and step < args.steps:
            ev = evaluate(model, held[: args.eval_windows], args.device)
            log(
                fh,
                step=step,
                heldout_loss_subset=round(ev["loss"], 4),
                usage_max=round(max(max(u) for u in ev["usage"]), 3),
                usage_min=round(min(min(u) for u in ev["usage"]), 3),
            )
        if time.time() - last_ckpt > args.ckpt_seconds or step == args.steps:
            save_checkpoint(ckpt, model, opt, step, train_seconds)
            last_ckpt = time.time()
    return step, train_seconds


def finish(model, cfg, meta, held, train_s, args, step, train_seconds, fh):
    """Save the HF directory, then score the shipped (bf16-rounded) weights on all held-out text."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    out = Path(args.out)
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2, sort_keys=True) + "\n")
    write_tokenizer_files(Tokenizer.from_file(str(Path(args.workdir) / "tokenizer.json")), out, cfg)
    shipped, _ = load_pretrained(out, args.device)
    t0 = time.time()
    ev = evaluate(shipped, held, args.device)
    base = ngram_baselines(train_s, held, cfg.vocab_size)
    summary = {
        "event": "final",
        "steps": step,
        "planned_steps": args.steps,
        "train_seconds": round(train_seconds, 1),
        "heldout_loss": ev["loss"],
        "heldout_ppl": math.exp(ev["loss"]),
        "heldout_targets": ev["tokens"],
        "eval_seconds": round(time.time() - t0, 1),
        **base,
        "usage": ev["usage"],
        "params_total": sum(p.numel() for p in shipped.parameters()),
        "data": {k: v for k, v in meta.items() if not k.endswith("_files")},
        "heldout_files": meta["heldout_files"],
    }
    log(fh, **summary)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stdlib", default=str(STDLIB))
    p.add_argument("--heldout-frac", type=float, default=0.05)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tie", action="store_true", help="tie lm_head to the embedding")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--aux-coef", type=float, default=0.02)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--ckpt-seconds", type=float, default=120)
    p.add_argument("--workdir", default=str(DEFAULT_WORK), help="cache: token streams, checkpoint")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument(
        "--max-train-seconds",
        type=float,
        default=2100,
        help="stop early (and say so in the log) once training time passes this",
    )
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument(
        "--hf-parity",
        action="store_true",
        help="only compare --out's logits with transformers' MixtralForCausalLM",
    )
    args = p.parse_args(argv)
    if args.hidden % args.heads or args.heads % args.kv_heads:
        p.error(
            f"--hidden {args.hidden} must divide by --heads {args.heads}, which must divide by "
            f"--kv-heads {args.kv_heads}"
        )
    if not 1 <= args.top_k <= args.experts:
        p.error(f"--top-k {args.top_k} must lie in 1..--experts ({args.experts})")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.hf_parity:
        print(
            "max abs logit difference vs transformers MixtralForCausalLM: "
            f"{hf_parity(args.out):.3g}"
        )
    else:
        train(args)


if __name__ == "__main__":
    main()
