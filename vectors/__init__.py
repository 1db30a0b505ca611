"""vectors: what a steering vector is and how it acts on a residual stream.

File format and metadata, SAE access through sae-lens, the exact steering math, per-row steering tables for
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
from vectors.hooks import SteeringSession, decoder_layers, steering_hooks
from vectors.io import load_vector, read_metadata, save_vector, update_metadata
from vectors.metadata import ApplyPhase, Method, ModelRef, SaeRef, Space, VectorMetadata
from vectors.names import NAME_PATTERN, name_from_path, validate_name, vector_path
from vectors.sae import SparseCoder, coder_from_sae_lens, layer_from_hook_name, load_sae
from vectors.steering import SparsePlan, code_space_sum, fast_steer, plan_for, reference_steer
from vectors.tables import LayerTable, build_tables, check_config, coders_by_layer
from vectors.vector import SteeringVector

__all__ = [
    "NAME_PATTERN",
    "ApplyPhase",
    "Catalog",
    "InvalidVectorName",
    "LayerTable",
    "Method",
    "ModelInfo",
    "ModelRef",
    "SaeLoadError",
    "SaeRef",
    "Space",
    "SparseCoder",
    "SparsePlan",
    "SteerError",
    "SteeringSession",
    "SteeringVector",
    "UnknownVector",
    "VectorCompatibilityError",
    "VectorFileError",
    "VectorFormatError",
    "VectorMetadata",
    "build_tables",
    "check_compatible",
    "check_config",
    "code_space_sum",
    "coder_from_sae_lens",
    "coders_by_layer",
    "decoder_layers",
    "fast_steer",
    "layer_from_hook_name",
    "load_sae",
    "load_vector",
    "model_info_from_config",
    "name_from_path",
    "plan_for",
    "read_metadata",
    "reference_steer",
    "save_vector",
    "steering_hooks",
    "update_metadata",
    "validate_name",
    "vector_path",
]
