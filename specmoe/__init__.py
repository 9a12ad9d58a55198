"""specmoe: plan, simulate and measure MoE serving with expert offloading and speculative decoding.

The core (everything but `specmoe.engine` and `specmoe.kernels`) imports no torch.
"""
from specmoe.errors import SpecMoEError

__version__ = "0.1.0"
__all__ = ["SpecMoEError", "__version__", "load_model", "load_system", "plan", "predict"]


def __getattr__(name):
    # Lazy so that `import specmoe` stays cheap and torch-free.
    if name in ("predict", "plan"):
        from specmoe.app import api
        return getattr(api, name)
    if name == "load_model":
        from specmoe.inputs.models import load_model
        return load_model
    if name == "load_system":
        from specmoe.inputs.hardware import load_system
        return load_system
    raise AttributeError(f"module 'specmoe' has no attribute {name!r}")


def __dir__():
    # The lazy names are not module globals until first used: list them for dir() and completion.
    return sorted(set(globals()) | set(__all__))
