"""The one trace schema, specmoe.trace/1, written by the engine and the simulator alike.

A trace is JSONL: a header line, then one event per line. Events are plain dicts so that unknown
fields survive a read/write round trip; `Event` only documents and checks the known ones.
Gzip is chosen by the file name (`.jsonl.gz`).
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specmoe.errors import SpecMoEError

SCHEMA = "specmoe.trace/1"
# engine: measured by our engine; sim: simulated; table: imported public measured tables
SOURCES = ("engine", "sim", "table")
PHASES = ("prefill", "draft", "verify", "decode", "bench")
# Event categories; extend here, never elsewhere.
CATEGORIES = (
    "gemm", "moe", "expert", "attn", "norm", "gate", "rope", "embed", "lm_head", "sample",
    "h2d", "d2h", "cpu_expert", "ssd", "draft_step", "verify", "accept", "iteration",
    "prefill", "launch", "other",
)
REQUIRED_EVENT_FIELDS = ("name", "cat", "ts_us", "dur_us")


@dataclass
class Header:
    source: str
    device: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    workload: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        if self.source not in SOURCES:
            raise SpecMoEError(f"trace header source={self.source!r}: allowed {SOURCES}")
        d = {"schema": SCHEMA, "source": self.source, "device": self.device, "model": self.model,
             "workload": self.workload, "policy": self.policy}
        d.update(self.extra)
        return d


def event(name: str, cat: str, ts_us: float, dur_us: float, **fields: Any) -> dict[str, Any]:
    """One event dict; None-valued optional fields are dropped to keep traces small."""
    if cat not in CATEGORIES:
        raise SpecMoEError(f"trace event cat={cat!r}: allowed {CATEGORIES}")
    ev = {"name": name, "cat": cat, "ts_us": float(ts_us), "dur_us": float(dur_us)}
    ev.update({k: v for k, v in fields.items() if v is not None})
    return ev


def _open(path: Path, mode: str):
    return gzip.open(path, mode + "t") if str(path).endswith(".gz") else open(path, mode)


def write_trace(path: str | Path, header: Header | dict, events: Iterable[dict]) -> Path:
    """Write atomically (temp file + rename) so an interrupted run never leaves half a trace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = header.to_dict() if isinstance(header, Header) else {"schema": SCHEMA, **header}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix, prefix=".tmp-")
    os.close(fd)
    try:
        with _open(Path(tmp), "w") as f:
            f.write(json.dumps(head) + "\n")
            for ev in events:
                f.write(json.dumps(ev) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@dataclass
class Trace:
    header: dict[str, Any]
    events: list[dict[str, Any]]
    path: Path | None = None

    def by_cat(self, *cats: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["cat"] in cats]

    @property
    def source(self) -> str:
        return self.header["source"]


def _check_event(ev: dict, where: str) -> None:
    missing = [k for k in REQUIRED_EVENT_FIELDS if k not in ev]
    if missing:
        raise SpecMoEError(f"{where}: event lacks field(s) {missing}; required {REQUIRED_EVENT_FIELDS}")


def iter_events(path: str | Path) -> Iterator[dict[str, Any]]:
    with _open(Path(path), "r") as f:
        next(f, None)
        for i, line in enumerate(f, start=2):
            if line.strip():
                ev = json.loads(line)
                _check_event(ev, f"{path}:{i}")
                yield ev


def read_trace(path: str | Path) -> Trace:
    path = Path(path)
    if not path.exists():
        raise SpecMoEError(f"trace {path}: no such file")
    with _open(path, "r") as f:
        first = f.readline()
    try:
        header = json.loads(first)
    except json.JSONDecodeError as exc:
        raise SpecMoEError(f"trace {path}: header line is not JSON ({exc.msg})") from None
    if header.get("schema") != SCHEMA:
        raise SpecMoEError(f"trace {path}: schema={header.get('schema')!r}, expected {SCHEMA!r}")
    if header.get("source") not in SOURCES:
        raise SpecMoEError(f"trace {path}: source={header.get('source')!r}, allowed {SOURCES}")
    return Trace(header=header, events=list(iter_events(path)), path=path)


def to_chrome(trace: Trace) -> dict[str, Any]:
    """Chrome trace-event JSON (Perfetto opens it): one 'X' event per span, a track per stream."""
    streams: dict[str, int] = {}
    out = []
    for ev in trace.events:
        tid = streams.setdefault(str(ev.get("stream", "main")), len(streams))
        args = {k: v for k, v in ev.items() if k not in ("name", "cat", "ts_us", "dur_us")}
        out.append({"name": ev["name"], "cat": ev["cat"], "ph": "X", "ts": ev["ts_us"],
                    "dur": ev["dur_us"], "pid": 0, "tid": tid, "args": args})
    meta = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": s}}
            for s, tid in streams.items()]
    return {"traceEvents": meta + out, "displayTimeUnit": "ms",
            "otherData": {k: v for k, v in trace.header.items() if k != "schema"}}


def export_chrome(trace_path: str | Path, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.write_text(json.dumps(to_chrome(read_trace(trace_path))))
    return out_path
