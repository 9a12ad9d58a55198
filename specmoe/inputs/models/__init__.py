"""Model shapes: the one ModelSpec type, read from Hugging Face configs, and the shipped catalog."""
from specmoe.inputs.models.catalog import list_models, load_model, save_to_catalog, user_catalog_dir
from specmoe.inputs.models.hf_export import to_hf_config
from specmoe.inputs.models.hf_import import from_hf_config, normalize_name, spec_from_dims
from specmoe.inputs.models.spec import FAMILIES, MODEL_TYPES, ModelSpec

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "ModelSpec",
    "from_hf_config",
    "list_models",
    "load_model",
    "normalize_name",
    "save_to_catalog",
    "spec_from_dims",
    "to_hf_config",
    "user_catalog_dir",
]
