import json

import pytest

from specmoe.errors import SpecMoEError
from specmoe.measure.trace import Header, event, export_chrome, read_trace, write_trace


def _events():
    return [
        event("expert", "moe", 0.0, 5.0, layer=0, expert=3, tokens=7, custom="kept"),
        event("fetch", "h2d", 1.0, 10.0, stream="copy", bytes=1024),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_round_trip_keeps_unknown_fields(tmp_path, suffix):
    p = write_trace(
        tmp_path / f"t{suffix}", Header(source="sim", policy={"name": "ondemand"}), _events()
    )
    tr = read_trace(p)
    assert tr.source == "sim" and tr.header["policy"]["name"] == "ondemand"
    assert tr.events[0]["custom"] == "kept" and tr.by_cat("h2d")[0]["bytes"] == 1024


def test_chrome_export_has_a_track_per_stream(tmp_path):
    p = write_trace(tmp_path / "t.jsonl", Header(source="engine"), _events())
    out = json.loads(export_chrome(p, tmp_path / "c.json").read_text())
    spans = [e for e in out["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == 2 and spans[0]["tid"] != spans[1]["tid"]


def test_bad_traces_are_named(tmp_path):
    with pytest.raises(SpecMoEError, match="cat="):
        event("x", "nonsense", 0, 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"schema": "other/1", "source": "sim"}) + "\n")
    with pytest.raises(SpecMoEError, match="schema"):
        read_trace(bad)
    bad.write_text(
        json.dumps({"schema": "specmoe.trace/1", "source": "sim"})
        + "\n"
        + json.dumps({"name": "x"})
        + "\n"
    )
    with pytest.raises(SpecMoEError, match="lacks field"):
        read_trace(bad)
