"""Our predictions for the SpecMoE paper's system, side by side with its published figures.

    python experiments/reproduce_specmoe.py [--no-sim] [--out experiments/reports]

System (hwprofiles/systems/specmoe-paper-h100.yaml): one H100 96 GB, PCIe 5 x16, DDR5 host; model
NLLB-MoE-54B (specmoe/data/models/nllb-moe-54b.json); greedy decoding; SpecMoE with γ = 10 and
N = 4 HotTemporal draft experts (the configuration behind the paper's 123.0 tokens/s).
Published (SpecMoE, arXiv 2604.10152) numbers are in PAPER below. Every parameter comes from a
datasheet or the paper's stated setup; none is fitted to these figures. Acceptance uses the
paper's own measured τ(10) per draft set (`--acceptance paper`): that is the paper's measured
input, so the τ rows agree by construction and are not a prediction.
Assumptions the paper does not state are listed in ASSUMPTIONS and printed with the table.

Writes OUT/reproduce_specmoe.md (table + explanation of the gap) and OUT/reproduce_specmoe.html
(figure, plotly.js from its CDN).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specmoe.costs.evidence import evidence_for
from specmoe.costs.ops import params_for
from specmoe.inputs.setup import Setup, resolve
from specmoe.planning.search import plan
from specmoe.predictors.analytic import Analytic

HERE = Path(__file__).resolve().parent
MODEL, HARDWARE = "nllb-moe-54b", "specmoe-paper-h100"
GAMMA, N_DRAFT, BIG, SMALL = 10, 4, 256, 1
PAPER = {
    "specmoe_tps_256": 123.0,
    "speedup_vs_ondemand_256": 4.30,
    "bytes_vs_ondemand": -76.73,
    "bytes_vs_caching": -71.89,
    "growth_ondemand": 45.28,
    "growth_caching": 50.97,
    "growth_specmoe": 10.96,
    "tau_random": 6.812,
    "tau_hot": 7.220,
    "tau_hottemporal": 7.265,
    "n_sweep": {2: 116.4, 4: 123.0, 8: 121.3, 16: 117.2},
}
# MoE-Caching's cache size is not given with the published figures; the hottest 10% of each
# layer's experts pinned (13 of NLLB-MoE's 128) is the common MoE-Caching setting (DESIGN.md §6).
CACHE_FRACTION = 0.1
CACHED_EXPERTS = 13
ASSUMPTIONS = [
    (
        "routing: uniform over NLLB-MoE's 128 experts (no NLLB-MoE routing trace in this "
        "repository; the routing rows below show how much a skewed routing would change)"
    ),
    f"MoE-Caching holds {CACHE_FRACTION:.0%} of each layer's experts (not stated with the "
    "published figures)",
    (
        "prompt 512 and output 256 tokens per sequence (the repository's defaults; decode "
        "throughput barely depends on them here)"
    ),
    "acceptance α solved from the paper's measured τ(10) per draft set; α does not vary with N",
]


def setup(
    policy: str,
    batch: int,
    gamma: int = 0,
    n: int = 0,
    draft_set: str = "hottemporal",
    routing: str | None = None,
) -> Setup:
    kw = {"gamma": gamma, "draft_experts": n, "draft_set": draft_set} if policy == "specmoe" else {}
    if policy == "caching":
        kw["resident_experts"] = CACHED_EXPERTS
    return resolve(
        model=MODEL,
        hardware=HARDWARE,
        policy=policy,
        batch=batch,
        acceptance="paper",
        routing=routing,
        **kw,
    )


def analytic(s: Setup) -> dict:
    r = Analytic(s.model, s.system, s.workload).evaluate(s.policy)
    return {
        "tokens_per_s": float(r.tokens_per_s),
        "bytes_per_token": float(r.h2d_bytes_per_token),
        "bytes_per_iteration": float(r.h2d_bytes_per_iteration),
        "tau": float(r.tokens_per_iteration) / s.workload.batch,
    }


def simulated(s: Setup, iterations: int = 40) -> dict:
    from specmoe.predictors.sim import Simulator

    r = Simulator(s, iterations=iterations, seed=0).run()
    return {
        "tokens_per_s": r.tokens_per_s,
        "bytes_per_token": r.h2d_bytes_per_token,
        "bytes_per_iteration": r.h2d_bytes_per_iteration,
        "tau": r.tokens_per_verification if r.tokens_per_verification else 1.0,
    }


def measure(engine, routing: str | None = None) -> dict:
    """Every quantity the paper reports, by one engine (analytic or simulated)."""
    runs = {
        ("ondemand", BIG): setup("ondemand", BIG, routing=routing),
        ("ondemand", SMALL): setup("ondemand", SMALL, routing=routing),
        ("caching", BIG): setup("caching", BIG, routing=routing),
        ("caching", SMALL): setup("caching", SMALL, routing=routing),
        ("specmoe", BIG): setup("specmoe", BIG, GAMMA, N_DRAFT, routing=routing),
        ("specmoe", SMALL): setup("specmoe", SMALL, GAMMA, N_DRAFT, routing=routing),
        ("specoff", SMALL): setup("specmoe", SMALL, 0, N_DRAFT, routing=routing),
    }
    r = {k: engine(s) for k, s in runs.items()}
    out = {
        "specmoe_tps_256": r["specmoe", BIG]["tokens_per_s"],
        "ondemand_tps_256": r["ondemand", BIG]["tokens_per_s"],
        "caching_tps_256": r["caching", BIG]["tokens_per_s"],
        "speedup_vs_ondemand_256": r["specmoe", BIG]["tokens_per_s"]
        / r["ondemand", BIG]["tokens_per_s"],
        "bytes_vs_ondemand": 100
        * (r["specmoe", BIG]["bytes_per_token"] / r["ondemand", BIG]["bytes_per_token"] - 1),
        "bytes_vs_caching": 100
        * (r["specmoe", BIG]["bytes_per_token"] / r["caching", BIG]["bytes_per_token"] - 1),
        # bytes moved to generate the same output_len per sequence: B·L/(B·τ) iterations × bytes per
        # iteration
        **{
            f"growth_{p}": r[p, BIG]["bytes_per_iteration"] / r[p, SMALL]["bytes_per_iteration"]
            for p in ("ondemand", "caching", "specmoe")
        },
        "caching_tps_1": r["caching", SMALL]["tokens_per_s"],
        "specmoe_tps_1": r["specmoe", SMALL]["tokens_per_s"],
        "ondemand_tps_1": r["ondemand", SMALL]["tokens_per_s"],
        "specoff_tps_1": r["specoff", SMALL]["tokens_per_s"],
    }
    for ds in ("random", "hot", "hottemporal"):
        d = engine(setup("specmoe", BIG, GAMMA, N_DRAFT, draft_set=ds, routing=routing))
        out[f"tau_{ds}"], out[f"tps_{ds}"] = d["tau"], d["tokens_per_s"]
    out["n_sweep"] = {
        n: engine(setup("specmoe", BIG, GAMMA, n, routing=routing))["tokens_per_s"]
        for n in PAPER["n_sweep"]
    }
    return out


ROWS = [  # key, label, unit format
    ("specmoe_tps_256", f"SpecMoE tokens/s, batch {BIG} (γ={GAMMA}, N={N_DRAFT})", "{:,.1f}"),
    ("speedup_vs_ondemand_256", f"SpecMoE / MoE-OnDemand throughput, batch {BIG}", "{:.2f}×"),
    ("bytes_vs_ondemand", f"bytes moved, SpecMoE vs OnDemand (batch {BIG})", "{:+.2f}%"),
    ("bytes_vs_caching", f"bytes moved, SpecMoE vs Caching (batch {BIG})", "{:+.2f}%"),
    ("growth_ondemand", f"bytes growth batch {SMALL}→{BIG}, OnDemand", "{:.2f}×"),
    ("growth_caching", f"bytes growth batch {SMALL}→{BIG}, Caching", "{:.2f}×"),
    ("growth_specmoe", f"bytes growth batch {SMALL}→{BIG}, SpecMoE", "{:.2f}×"),
    ("tau_random", "mean accepted tokens τ(10), random draft experts (input)", "{:.3f}"),
    ("tau_hot", "τ(10), hottest experts overall (input)", "{:.3f}"),
    ("tau_hottemporal", "τ(10), HotTemporal (input)", "{:.3f}"),
]


def fmt(fmt_s: str, v) -> str:
    return "–" if v is None else fmt_s.format(v)


def markdown(ana: dict, sim: dict | None, sens: dict[str, dict], picks: dict, sim_note: str) -> str:
    cols = (
        ["quantity", "paper", "ours (analytic)"]
        + (["ours (simulated)"] if sim else [])
        + ["analytic / paper"]
    )
    lines = [
        "# SpecMoE paper's system: our predictions vs the published figures",
        "",
        "Generated by `python experiments/reproduce_specmoe.py` (do not edit by hand).",
        "",
        (
            f"System `{HARDWARE}` (one H100 96 GB, PCIe 5 x16 at 63 GB/s per direction, 1 TB "
            f"DDR5), model `{MODEL}` (128 experts, top-2, 6 decoder MoE layers, 67 MB per expert), "
            f"greedy, SpecMoE γ = {GAMMA}, N = {N_DRAFT} HotTemporal draft experts. Published: "
            "SpecMoE, arXiv 2604.10152."
        ),
        "",
        "Assumptions (not in the paper's stated setup):",
        "",
    ]
    lines += [f"- {a}" for a in assumptions(setup("ondemand", BIG).system)]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for key, label, f in ROWS:
        p, a = PAPER[key], ana[key]
        ratio = a / p if p else None
        cells = (
            [label, f.format(p), f.format(a)]
            + ([fmt(f, sim.get(key))] if sim else [])
            + [f"{ratio:.2f}" if ratio is not None else "–"]
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Draft experts N at batch {BIG}, γ = {GAMMA} (tokens/s; in brackets relative to N = 4):",
        "",
        "| N | paper | ours (analytic) |" + (" ours (simulated) |" if sim else ""),
        "|---|---|---|" + ("---|" if sim else ""),
    ]
    for n, p in PAPER["n_sweep"].items():
        a = ana["n_sweep"][n]
        paper_rel, ours_rel = p / PAPER["n_sweep"][4], a / ana["n_sweep"][4]
        row = f"| {n} | {p:.1f} ({paper_rel:.3f}) | {a:,.1f} ({ours_rel:.3f}) |"
        if sim:
            s = sim["n_sweep"][n]
            row += f" {s:,.1f} ({s / sim['n_sweep'][4]:.3f}) |"
        lines.append(row)
    lines += [
        "",
        f"Batch {SMALL} (paper: MoE-Caching slightly faster than SpecMoE):",
        "",
        "| policy | ours (analytic) tokens/s |" + (" ours (simulated) |" if sim else ""),
        "|---|---|" + ("---|" if sim else ""),
    ]
    for key, label in (
        ("caching_tps_1", f"MoE-Caching ({CACHE_FRACTION:.0%} cached)"),
        ("specmoe_tps_1", f"SpecMoE γ={GAMMA}, N={N_DRAFT} (speculating)"),
        ("specoff_tps_1", f"SpecMoE, speculation off, N={N_DRAFT} resident"),
        ("ondemand_tps_1", "MoE-OnDemand"),
    ):
        lines.append(f"| {label} | {ana[key]:,.1f} |" + (f" {sim[key]:,.1f} |" if sim else ""))
    for b, p in picks.items():
        best = p["best"]
        spec = (
            f"γ={best['gamma']}, " if best["gamma"] else "speculation off, "
        ) + f"N={best['draft_experts']}"
        lines.append(
            f"| planner's choice at batch {b}: {best['policy']} ({spec}) | "
            f"{best['tokens_per_s']:,.1f} |" + (" |" if sim else "")
        )
    lines += [
        "",
        (
            "Sensitivity to routing skew (analytic; not a fit — shows how far the uniform "
            "assumption moves the byte figures):"
        ),
        "",
        (
            "| routing | speedup | bytes vs OnDemand | bytes vs Caching | growth OnDemand | growth "
            "Caching | growth SpecMoE |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in sens.items():
        lines.append(
            f"| {name} | {r['speedup_vs_ondemand_256']:.2f}× | {r['bytes_vs_ondemand']:+.1f}% | "
            f"{r['bytes_vs_caching']:+.1f}% | {r['growth_ondemand']:.1f}× | "
            f"{r['growth_caching']:.1f}× | {r['growth_specmoe']:.1f}× |"
        )
    lines += (
        ["", "## Where we differ, and why", ""]
        + gap_text(ana, sim, sens, picks)
        + ["", sim_note, ""]
    )
    return "\n".join(lines)


def profile_text(system) -> str:
    """What the default profile assumes (specmoe.costs.evidence), in one sentence."""
    ev, p = evidence_for(system), params_for(system)
    return (
        "Our default profile is evidence-based, not calibrated on this testbed: GPU parameters "
        f"{ev.gpu}; the link at {p.link_eff:.0%} of its signalling rate (published host-to-device "
        f"copy measurements), {p.kernel_overhead_us:g} µs per kernel, HBM at {p.hbm_eff:.0%} of "
        "peak."
    )


def assumptions(system) -> list[str]:
    return [*ASSUMPTIONS, profile_text(system)]


def gap_text(ana: dict, sim: dict | None, sens: dict[str, dict], picks: dict) -> list[str]:
    s = setup("ondemand", BIG)
    m, link = s.model, s.system.link
    all_gb = m.num_moe_layers * m.num_experts * m.expert_bytes / 1e9
    od_paper = PAPER["specmoe_tps_256"] / PAPER["speedup_vs_ondemand_256"]
    it_paper, it_ours = BIG / od_paper, BIG / ana["ondemand_tps_256"]
    z = sens["zipf s=1.0"]
    counts = Analytic(m, s.system, s.workload).counts
    u_verify = float(counts.distinct_and_missing(float(GAMMA + 1), 0)[0])
    u_step = float(counts.distinct_and_missing(1.0, 0)[0])
    pick1 = picks[SMALL]["best"]
    off = "speculation off" if pick1["gamma"] == 0 else f"γ={pick1['gamma']}"
    faster = "faster" if pick1["tokens_per_s"] > ana["caching_tps_1"] else "slower"
    return [
        (
            f"- **Absolute throughput is {ana['specmoe_tps_256'] / PAPER['specmoe_tps_256']:.0f}× "
            f"the paper's.** The paper's numbers imply MoE-OnDemand at {od_paper:.1f} tokens/s, "
            f"i.e. {it_paper:.1f} s per decode step of {BIG} tokens. Fetching every decoder expert "
            f"once ({m.num_moe_layers} layers × {m.num_experts} × {m.expert_bytes / 1e6:.0f} MB = "
            f"{all_gb:.1f} GB) takes {all_gb / link.h2d_gbps:.2f} s at {link.h2d_gbps:g} GB/s, and "
            f"our whole OnDemand step is {it_ours:.2f} s. {profile_text(s.system)} The paper's "
            f"implementation spends about {it_paper / it_ours:.0f}× longer per step than its PCIe "
            "transfers need. The published figures do not say what that time is (per-expert kernel "
            "launches and copies, pageable host memory, encoder work counted in the throughput, "
            "framework overhead are all candidates). Calibrating on traces of the real engine "
            "(`specmoe calibrate`) is how this gap gets closed. Until then, compare ratios, not "
            "absolute tokens/s."
        ),
        (
            f"- **The speed-up over OnDemand is larger ({ana['speedup_vs_ondemand_256']:.2f}× vs "
            f"{PAPER['speedup_vs_ondemand_256']}×), and so are the byte savings "
            f"({ana['bytes_vs_ondemand']:+.1f}% vs {PAPER['bytes_vs_ondemand']}%).** In our model "
            f"both policies are bound by PCIe at batch {BIG}. A verification over "
            f"{BIG}×{GAMMA + 1} positions needs nearly every expert, about the bytes of one "
            f"OnDemand step, and yields τ = {PAPER['tau_hottemporal']} tokens per sequence instead "
            "of 1. So the speed-up is about τ less the drafting time. A fixed cost per forward "
            "pass larger than our profile's (see above) would lower the ratio, since SpecMoE runs "
            f"{GAMMA + 1} passes per iteration to OnDemand's one. The published figures do not "
            "show whether that is the cause."
        ),
        (
            f"- **Bytes growth from batch {SMALL} to {BIG}.** Under uniform routing OnDemand's "
            f"growth is U({BIG})/U({SMALL}) = {ana['growth_ondemand']:.1f}× (paper "
            f"{PAPER['growth_ondemand']}×), and Caching's is the same. A Zipf skew of s = 1 brings "
            f"OnDemand to {z['growth_ondemand']:.1f}× but pushes Caching to "
            f"{z['growth_caching']:.1f}× (paper {PAPER['growth_caching']}×). No single skew "
            "matches both, so routing alone does not explain the gap. SpecMoE's growth is "
            f"{ana['growth_specmoe']:.1f}× against {PAPER['growth_specmoe']}×: at batch {SMALL} a "
            f"γ = {GAMMA} verification already touches {u_verify:.0f} experts per layer in our "
            "model. A measured NLLB-MoE routing trace is what is missing."
        ),
        (
            "- **Draft experts N.** The paper finds a peak at N = 4: drafts get better with N "
            "while drafting costs more. Our throughput moves "
            f"{100 * (min(ana['n_sweep'].values()) / ana['n_sweep'][4] - 1):+.1f}% to "
            f"{100 * (max(ana['n_sweep'].values()) / ana['n_sweep'][4] - 1):+.1f}% across N and "
            "keeps rising: more resident experts, slightly fewer bytes. We hold α fixed across N "
            "because no per-N acceptance for NLLB-MoE is available. Measured α per N "
            "(`--acceptance measured:NAME`) would bring in the paper's trade-off."
        ),
        (
            f"- **Batch {SMALL}.** As in the paper, MoE-Caching ({ana['caching_tps_1']:.1f} "
            f"tokens/s) beats SpecMoE speculating with γ = {GAMMA} ({ana['specmoe_tps_1']:.1f}). "
            f"Our margin is wider than the paper's 'slightly': verifying {GAMMA + 1} positions of "
            f"one sequence fetches {u_verify / u_step:.0f}× the experts of one step, "
            f"for {PAPER['tau_hottemporal']} tokens. With speculation off and N = {N_DRAFT} "
            f"resident, SpecMoE gives {ana['specoff_tps_1']:.1f} tokens/s, just behind Caching's "
            f"{CACHE_FRACTION:.0%} cache. The planner's choice (specmoe, {off}, N = "
            f"{pick1['draft_experts']} resident) is {faster} than Caching at "
            f"{pick1['tokens_per_s']:.1f} tokens/s."
        ),
        "- **τ rows** repeat the paper's measured acceptance. They are the model's input, not a "
        "prediction.",
    ]


def figure(ana: dict, sim: dict | None):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            f"ratios at batch {BIG}",
            f"bytes growth, batch {SMALL}→{BIG}",
            f"tokens/s vs N (relative to N=4), batch {BIG}",
        ),
    )
    ratio_keys = [
        ("speedup_vs_ondemand_256", "speed-up vs OnDemand (×)"),
        ("bytes_vs_ondemand", "bytes vs OnDemand (−%)"),
        ("bytes_vs_caching", "bytes vs Caching (−%)"),
    ]
    growth_keys = [
        ("growth_ondemand", "OnDemand"),
        ("growth_caching", "Caching"),
        ("growth_specmoe", "SpecMoE"),
    ]
    series = [("paper", PAPER, "#636efa"), ("ours (analytic)", ana, "#ef553b")] + (
        [("ours (simulated)", sim, "#00cc96")] if sim else []
    )
    for name, src, color in series:
        vals = [abs(src[k]) for k, _ in ratio_keys]
        fig.add_trace(
            go.Bar(
                x=[lbl for _, lbl in ratio_keys],
                y=vals,
                name=name,
                marker_color=color,
                legendgroup=name,
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                x=[lbl for _, lbl in growth_keys],
                y=[src[k] for k, _ in growth_keys],
                name=name,
                marker_color=color,
                legendgroup=name,
                showlegend=False,
            ),
            row=1,
            col=2,
        )
        ns = list(PAPER["n_sweep"])
        fig.add_trace(
            go.Scatter(
                x=ns,
                y=[src["n_sweep"][n] / src["n_sweep"][4] for n in ns],
                name=name,
                mode="lines+markers",
                marker_color=color,
                legendgroup=name,
                showlegend=False,
            ),
            row=1,
            col=3,
        )
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(type="log", row=1, col=3)
    fig.update_layout(
        title=f"SpecMoE paper system ({MODEL} on {HARDWARE}): ours vs published "
        f"(absolute SpecMoE tokens/s at batch {BIG}: paper {PAPER['specmoe_tps_256']}, "
        f"ours {ana['specmoe_tps_256']:,.0f})",
        barmode="group",
        template="plotly_white",
        height=480,
        width=1300,
    )
    return fig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "reports"))
    ap.add_argument("--no-sim", action="store_true", help="analytic only (fast)")
    args = ap.parse_args()
    ana = measure(analytic)
    sim, sim_note = None, "Simulated column not run (--no-sim)."
    if not args.no_sim:
        try:
            sim = measure(simulated)
            sim_note = (
                "Simulated: specmoe.predictors.sim, 40 decode iterations, seed 0, same cost model "
                "with sampled routing, acceptance and (for Caching) an LRU cache beyond the pinned "
                "experts."
            )
        except ImportError as exc:
            sim_note = f"Simulated column not available: {exc}."
    sens = {
        "uniform (used above)": ana,
        "zipf s=0.5": measure(analytic, "zipf:0.5"),
        "zipf s=1.0": measure(analytic, "zipf:1.0"),
    }
    picks = {
        b: plan(
            model=MODEL,
            hardware=HARDWARE,
            batch=b,
            policies=("ondemand", "caching", "specmoe"),
            resident_experts=CACHED_EXPERTS,
            acceptance="paper",
            draft_experts=list(PAPER["n_sweep"]),
            confirm="analytic",
            explain=False,
        )
        for b in (SMALL, BIG)
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(ana, sim, sens, picks, sim_note)
    (out / "reproduce_specmoe.md").write_text(md)
    figure(ana, sim).write_html(out / "reproduce_specmoe.html", include_plotlyjs="cdn")
    print(md)
    print(f"\nwrote {out / 'reproduce_specmoe.md'} and {out / 'reproduce_specmoe.html'}")


if __name__ == "__main__":
    main()
