"""Inputs: hardware profiles, model shapes, workload (routing, acceptance) and the policy
registry."""
