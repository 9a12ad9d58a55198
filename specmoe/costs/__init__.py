"""Costs: the one per-op cost model, and the one memory/residency model,
shared by every predictor."""
