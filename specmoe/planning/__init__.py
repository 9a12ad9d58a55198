"""Planning: search over policies, γ and N, explanations, the online γ controller, sweeps."""
