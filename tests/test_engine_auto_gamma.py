"""γ chosen per round by a controller (`--gamma auto`): output stays lossless,
γ follows the controller."""
import json

import pytest
from specmoe.engine.config import MoEConfig
from specmoe.engine.generate import Engine
from specmoe.engine.weights import random_model

from specmoe.app.cli.engine import add_engine_commands
from specmoe.inputs.policies import make_policy

CFG = MoEConfig(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, experts=8, top_k=2,
                expert_ffn=32, vocab=64, max_seq_len=64, max_batch=4, dtype="float64")
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9]]
NEW = 16


class Scripted:
    """A controller that plays a fixed γ sequence (0 = speculation off for that round)."""

    def __init__(self, plan):
        self.plan, self.i, self.gammas, self.seen = list(plan), 0, range(7), []

    @property
    def gamma(self):
        return self.plan[0]

    def observe(self, accepted, drafted):
        self.seen.append((list(accepted), list(drafted)))
        self.i += 1
        return self.plan[self.i % len(self.plan)]


def test_varying_gamma_is_lossless_and_follows_the_controller(greedy_reference):
    w = random_model(CFG, seed=3)
    ctl = Scripted([3, 0, 5, 1, 6, 2])
    eng = Engine(w, make_policy("specmoe", gamma=6, draft_experts=2), max_batch=2)
    res = eng.generate(PROMPTS, NEW, gamma_controller=ctl)
    assert res.tokens == greedy_reference(CFG, w, PROMPTS, NEW)
    rounds = res.stats.gamma_by_round
    assert rounds and set(rounds) <= {1, 2, 3, 5, 6} and len(set(rounds)) > 2
    assert rounds[0] == 3
    drafted = [d for _, d in ctl.seen if d and d[0] > 0]
    assert [d[0] for d in drafted] == rounds      # the controller saw every round's γ
    assert any(d == [0] for _, d in ctl.seen)     # and the rounds without speculation as 0 drafted


def test_gamma_auto_from_the_cli(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_engine_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "engine",
            "run",
            "--layers",
            "2",
            "--dtype",
            "float32",
            "--policy",
            "specmoe",
            "--gamma",
            "auto",
            "--batch",
            "2",
            "--prompt-len",
            "6",
            "--max-new-tokens",
            "12",
            "--synthetic-acceptance",
            "0.2",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("gamma auto:"))
    gammas = json.loads(line.split("γ per round ")[1].split("]")[0] + "]")
    assert gammas and all(0 <= g <= 16 for g in gammas)
    with pytest.raises(Exception, match="--gamma auto"):
        bad = parser.parse_args(
            ["engine", "run", "--layers", "2", "--policy", "ondemand", "--gamma", "auto"]
        )
        bad.func(bad)
