"""Discrete-event simulator (SimPy) of MoE serving with expert offloading and speculative
decoding."""
from specmoe.predictors.sim.result import SimResult
from specmoe.predictors.sim.simulator import Serving, SimOptions, Simulator, simulate

__all__ = ["Serving", "SimOptions", "SimResult", "Simulator", "simulate"]
