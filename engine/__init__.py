"""specmoe.engine: the real MoE engine (torch; CPU or CUDA). See engine/README.md.

The main names load on first use, so `import specmoe.engine` stays cheap.
"""
import importlib

_EXPORTS = {
    "Engine": "generate", "GenerationResult": "generate", "GenerationStats": "generate",
    "MoEConfig": "config", "Weights": "weights", "load_weights": "weights",
    "random_model": "weights", "save_weights": "weights", "Tracer": "tracer",
    "run_microbench": "microbench", "add_engine_commands": "cli",
}
__all__ = ["Engine", "GenerationResult", "GenerationStats", "MoEConfig", "Tracer", "Weights",
           "add_engine_commands", "load_weights", "random_model", "run_microbench", "save_weights"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
