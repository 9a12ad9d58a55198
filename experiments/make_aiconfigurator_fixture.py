"""Extract the small, attributed aiconfigurator fixture that the CPU tests read.

    python experiments/make_aiconfigurator_fixture.py     # needs `pip install 'specmoe[tables]'`

Copies a few rows of NVIDIA aiconfigurator's H100 SXM vLLM tables (aiconfigurator-core 0.12.0,
Apache-2.0, Copyright NVIDIA CORPORATION & AFFILIATES) into tests/data/aiconfigurator/systems/
in the package's own layout, so that tests run the importer on real rows without the package.
Kept: two MoE shapes (Mixtral-8x7B balanced and power_law_1.2, Qwen3-30B-A3B balanced), the
square 4096 GEMM over every m, one decode and one prefill attention shape over batch 1 and 8,
plus rows the importer must drop (fp8, tensor parallel, head_dim 512, a sliding window).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from specmoe.measure import aiconfigurator as aic

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "aiconfigurator" / "systems"
GPU, BACKEND, VERSION = "h100_sxm", "vllm", "0.24.0"


def moe(df):
    bf = df[(df.moe_dtype == "bfloat16") & (df.moe_tp_size == 1) & (df.moe_ep_size == 1)]
    keep = [bf[(bf.hidden_size == 4096) & (bf.inter_size == 14336)
               & bf.distribution.isin(["balanced", "power_law_1.2"])],
            bf[(bf.hidden_size == 2048) & (bf.inter_size == 768) & (bf.distribution == "balanced")],
            df[(df.moe_dtype != "bfloat16")].head(2), df[df.moe_tp_size == 2].head(2)]
    return pd.concat(keep)


def gemm(df):
    return pd.concat([df[(df.gemm_dtype == "bfloat16") & (df.n == 4096) & (df.k == 4096)],
                      df[df.gemm_dtype == "fp8"].head(2)])


def attention(df):
    base = (df.num_heads == 32) & (df.num_key_value_heads == 8) & (df.head_dim == 128) \
        & df.batch_size.isin([1, 8]) & (df.kv_cache_dtype == "bfloat16")
    return pd.concat([df[base & (df.window_size == 0)], df[base & (df.window_size > 0)].head(2),
                      df[df.head_dim == 512].head(2)])


def main() -> None:
    root = aic.data_root()
    if OUT.exists():
        shutil.rmtree(OUT)
    for op, pick in (("moe", moe), ("gemm", gemm), ("decode_attention", attention),
                     ("prefill_attention", attention)):
        path, _ = aic.table_file(GPU, op, BACKEND, VERSION, root)
        dst = OUT / path.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        pick(pd.read_parquet(path)).to_parquet(dst, index=False)
        meta = path.parent / "collection_meta.yaml"
        if meta.exists():
            shutil.copy(meta, dst.parent / meta.name)
    shutil.copy(root / "query_versions.yaml", OUT / "query_versions.yaml")
    (OUT / "PACKAGE_VERSION").write_text(aic.installed_version() + "\n")
    print(f"wrote {OUT}: {sum(f.stat().st_size for f in OUT.rglob('*') if f.is_file())} bytes")


if __name__ == "__main__":
    main()
