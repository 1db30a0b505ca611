"""vectors: what a steering vector is and how it acts on a residual stream.

File format and metadata, SAE access through sae-lens, the exact steering math, per-slot steering buffers for
batches, forward hooks on Hugging Face models, and the catalog of a directory of vector files.
"""

from vectors.catalog import Catalog, ModelInfo, check_compatible, model_info_from_config
from vectors.errors import (
    InvalidVectorName,
    SaeLoadError,
    SteerError,
    UnknownVector,
    VectorCompatibilityError,
    VectorFileError,
    VectorFormatError,
)
from vectors.hooks import decoder_layers, install_hooks, layer_hook
from vectors.io import load_vector, read_metadata, save_vector, update_metadata
from vectors.metadata import ApplyPhase, Method, ModelRef, SaeRef, Space, VectorMetadata
from vectors.names import NAME_PATTERN, name_from_path, validate_name, vector_path
from vectors.sae import SparseCoder, coder_from_sae_lens, layer_from_hook_name, load_sae
from vectors.slots import LayerRow, SlotSteering, apply_config, coders_by_layer, compose
from vectors.steering import reference_steer
from vectors.vector import SteeringVector

__all__ = [
    "NAME_PATTERN",
    "ApplyPhase",
    "Catalog",
    "InvalidVectorName",
    "LayerRow",
    "Method",
    "ModelInfo",
    "ModelRef",
    "SaeLoadError",
    "SaeRef",
    "SlotSteering",
    "Space",
    "SparseCoder",
    "SteerError",
    "SteeringVector",
    "UnknownVector",
    "VectorCompatibilityError",
    "VectorFileError",
    "VectorFormatError",
    "VectorMetadata",
    "apply_config",
    "check_compatible",
    "coder_from_sae_lens",
    "coders_by_layer",
    "compose",
    "decoder_layers",
    "install_hooks",
    "layer_from_hook_name",
    "layer_hook",
    "load_sae",
    "load_vector",
    "model_info_from_config",
    "name_from_path",
    "read_metadata",
    "reference_steer",
    "save_vector",
    "update_metadata",
    "validate_name",
    "vector_path",
]
