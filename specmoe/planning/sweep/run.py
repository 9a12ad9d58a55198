"""Running a sweep: chunks in processes (or Ray), a manifest for resuming, progress."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from specmoe.errors import SpecMoEError
from specmoe.fileio import atomic_write
from specmoe.planning.sweep.chunk import run_chunk_task
from specmoe.planning.sweep.grid import BACKENDS, Grid, load_grid
from specmoe.planning.sweep.store import concat, load_npz, result_format, save_npz, write_table

# ---- running -----------------------------------------------------------------------------------

class Manifest:
    """OUT.parts/manifest.json: the grid's fingerprint and the ids of chunks saved so far."""

    def __init__(self, parts: Path, fingerprint: str, total: int, fresh: bool):
        self.parts, self.path = parts, parts / "manifest.json"
        if fresh and parts.exists():
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        for tmp in parts.glob(".tmp-*"):
            tmp.unlink()      # a write cut off by a kill
        self.done: set[int] = set()
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("fingerprint") != fingerprint or data.get("chunks") != total:
                raise SpecMoEError(
                    f"{parts} holds chunks of a different grid (fingerprint "
                    f"{data.get('fingerprint')} vs {fingerprint}); use --fresh to start over"
                )
            self.done = {i for i in data.get("done", []) if self.chunk_path(i).exists()}
        self.fingerprint, self.total = fingerprint, total
        self._write()

    def chunk_path(self, i: int) -> Path:
        return self.parts / f"chunk-{i:06d}.npz"

    def add(self, i: int, cols: dict[str, np.ndarray]) -> None:
        save_npz(self.chunk_path(i), cols)     # the chunk first, then the manifest that lists it
        self.done.add(i)
        self._write()

    def _write(self) -> None:
        body = json.dumps(
            {
                "schema": "specmoe.planning.sweep/1",
                "fingerprint": self.fingerprint,
                "chunks": self.total,
                "done": sorted(self.done),
            }
        )
        atomic_write(self.path, lambda p: p.write_text(body))


def _tasks(grid: Grid, groups, chunks) -> list[tuple]:
    return [(c.id, groups[c.group], c.start, c.stop, grid.engine, grid.sim) for c in chunks]


def _execute(tasks: list[tuple], backend: str, jobs: int, ray_address: str | None):
    """Yield (chunk id, columns) as chunks finish, on the chosen backend."""
    if backend == "serial" or jobs == 1 or len(tasks) <= 1:
        for t in tasks:
            yield run_chunk_task(t)
        return
    if backend == "ray":
        yield from _execute_ray(tasks, ray_address)
        return

    # spawn, not fork: the progress bar runs a thread, and forking a threaded process can deadlock.
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = [pool.submit(run_chunk_task, t) for t in tasks]
        try:
            for f in as_completed(futures):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def _execute_ray(tasks: list[tuple], address: str | None):
    try:
        import ray
    except ImportError:
        raise SpecMoEError("--backend ray needs ray (pip install 'specmoe[ray]')") from None
    if not ray.is_initialized():
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True
        )
    remote = ray.remote(run_chunk_task)
    pending = [remote.remote(t) for t in tasks]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref)


def run_sweep(
    grid: Grid | str | Path | dict,
    out: str | Path | None = None,
    jobs: int | None = None,
    backend: str = "local",
    engine: str | None = None,
    progress: bool = True,
    fresh: bool = False,
    on_chunk: Callable[[int, int, int], None] | None = None,
    ray_address: str | None = None,
    console=None,
) -> dict[str, np.ndarray]:
    """Run a grid; return its columns and, with `out`, write them (resumable: see the module doc).

    on_chunk(chunk_id, chunks_done, chunks_total) is called after each chunk is saved (tests use it
    to interrupt a run). jobs: worker processes (default: CPU count); backend: local|ray|serial.
    """
    if backend not in BACKENDS:
        raise SpecMoEError(f"backend={backend!r}: allowed {BACKENDS}")
    grid = grid if isinstance(grid, Grid) else load_grid(grid, engine)
    if engine and engine != grid.engine:
        raise SpecMoEError(
            f"engine={engine!r} differs from the loaded grid's {grid.engine!r}: "
            "pass the grid as a path"
        )
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise SpecMoEError(f"jobs={jobs}: must be >= 1")
    out = Path(out) if out is not None else None
    if out is not None:
        result_format(out)
    groups, chunks = grid.chunks()
    manifest = (
        Manifest(Path(f"{out}.parts"), grid.fingerprint(), len(chunks), fresh) if out else None
    )
    done = manifest.done if manifest else set()
    results: dict[int, dict[str, np.ndarray]] = {}
    todo = [c for c in chunks if c.id not in done]
    total = sum(c.stop - c.start for c in chunks)
    with _progress(progress, console) as bar:
        task = bar.add_task(f"{grid.name} ({grid.engine}, {len(chunks)} chunks)", total=total,
                            completed=sum(c.stop - c.start for c in chunks if c.id in done))
        for cid, cols in _execute(_tasks(grid, groups, todo), backend, jobs, ray_address):
            if manifest:
                manifest.add(cid, cols)
            else:
                results[cid] = cols
            bar.advance(task, chunks[cid].stop - chunks[cid].start)
            if on_chunk:
                on_chunk(cid, len(manifest.done) if manifest else len(results), len(chunks))
    if manifest:
        table = concat(load_npz(manifest.chunk_path(c.id)) for c in chunks)
        write_table(table, out)
        shutil.rmtree(manifest.parts)
        return table
    return concat(results[c.id] for c in chunks)


def _progress(enabled: bool, console=None):

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("configs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        console=console,
        transient=False,
    )
