"""Sweeps: any grid over models, hardware, policy, batch, γ, N, α, lengths and routing.

    specmoe sweep GRID.yaml -o results.parquet        # or .csv; --engine sim; --backend ray

A grid file names its axes; every value is checked before any work starts:

    name: mixtral-vs-qwen
    engine: analytic            # or sim (every policy, slower)
    axes:
      model: [mixtral-8x7b, qwen3-30b-a3b]
      hardware: [h100-pcie, l40s]
      policy: [ondemand, caching, specmoe]
      batch: {start: 1, stop: 256, factor: 2}      # 1, 2, 4, …, 256 (or {start, stop, step})
      gamma: {start: 0, stop: 12, step: 1}
      draft_experts: [1, 2, 4]
      alpha: [0.6, 0.8, paper]                      # a number in [0, 1), paper or measured:NAME
      routing: [uniform, "zipf:1.2"]

Configurations are grouped by everything but (batch, γ, N, α); each group is one analytic call over
the product of those four. A policy ignores the axes it has no use for (ondemand: γ, N, α, …):
it gets one row per remaining combination, with those columns empty. Work is cut into chunks,
each written atomically next to the output (OUT.parts/) and listed in a manifest once done; a
restarted sweep skips the done chunks and ends with the same file as an uninterrupted run.

Modules: grid (axes, defaults, checks), chunk (evaluating one chunk), store (files), run
(processes or Ray, the manifest that resumes, progress).
"""
from specmoe.planning.sweep.chunk import run_chunk
from specmoe.planning.sweep.grid import AXES, BACKENDS, ENGINES, Grid, load_grid
from specmoe.planning.sweep.run import run_sweep
from specmoe.planning.sweep.store import RESULT_SUFFIXES, load_results, write_table

__all__ = ["AXES", "BACKENDS", "ENGINES", "RESULT_SUFFIXES", "Grid", "load_grid", "load_results",
           "run_chunk", "run_sweep", "write_table"]
