"""Fitting: calibration of cost parameters to traces, and validation against measured runs."""
