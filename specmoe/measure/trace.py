"""The one trace schema, specmoe.trace/1, written by the engine and the simulator alike.

A trace is JSONL: a header line, then one event per line. Events are plain dicts so that unknown
fields survive a read/write round trip; `Event` only documents and checks the known ones.
Gzip is chosen by the file name (`.jsonl.gz`).
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specmoe.errors import SpecMoEError
from specmoe.fileio import atomic_write, atomic_write_text

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

    def write(tmp: Path) -> None:
        with _open(tmp, "w") as f:
            f.write(json.dumps(head) + "\n")
            for ev in events:
                f.write(json.dumps(ev) + "\n")

    atomic_write(path, write)
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
        raise SpecMoEError(
            f"{where}: event lacks field(s) {missing}; required {REQUIRED_EVENT_FIELDS}"
        )


def iter_events(path: str | Path, what: str = "trace") -> Iterator[dict[str, Any]]:
    with _open(Path(path), "r") as f:
        next(f, None)
        for i, line in enumerate(f, start=2):
            if line.strip():
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SpecMoEError(f"{what} {path}:{i}: not a JSON event ({exc.msg})") from None
                if not isinstance(ev, dict):
                    raise SpecMoEError(f"{what} {path}:{i}: an event must be a JSON object")
                _check_event(ev, f"{what} {path}:{i}")
                yield ev


def read_trace(path: str | Path, what: str = "trace") -> Trace:
    """Read a specmoe.trace/1 file; anything else (another format, a binary file) raises
    SpecMoEError whose message starts with `what` (the CLI passes its flag, e.g. '--trace')."""
    path = Path(path)
    if not path.is_file():
        raise SpecMoEError(f"{what} {path}: no such file")
    try:
        with _open(path, "r") as f:
            first = f.readline()
        header = json.loads(first)
        if not isinstance(header, dict) or header.get("schema") != SCHEMA:
            header = header if isinstance(header, dict) else {}
            raise ValueError(f"schema={header.get('schema')!r}, expected {SCHEMA!r}")
        if header.get("source") not in SOURCES:
            raise ValueError(f"source={header.get('source')!r}, allowed {SOURCES}")
        return Trace(header=header, events=list(iter_events(path, what)), path=path)
    except (UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, SpecMoEError):
            raise
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).splitlines()[0]
        raise SpecMoEError(f"{what} {path}: not a {SCHEMA} JSONL(.gz) trace ({why})") from None


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
    atomic_write_text(out_path, json.dumps(to_chrome(read_trace(trace_path))))
    return out_path
