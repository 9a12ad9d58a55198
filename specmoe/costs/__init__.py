"""Costs layer: per-op costs (ops), measured-table interpolation (tables)."""
from specmoe.costs.ops import (GB, PARAM_NAMES, TFLOP, US, CostModel, CostParams, params_for,
                               roofline)

__all__ = ["GB", "PARAM_NAMES", "TFLOP", "US", "CostModel", "CostParams", "params_for", "roofline"]
