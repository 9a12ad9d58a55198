"""Predictors: the analytic model and the SimPy simulator, both built on specmoe.costs."""
