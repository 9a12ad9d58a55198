"""Measurements: the trace schema (specmoe.trace/1) and readers of measured data."""
