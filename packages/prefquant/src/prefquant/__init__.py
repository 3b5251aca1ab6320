"""prefquant: discrete preference tokens and semantic IDs from embeddings, with torch alone.

Quantize continuous embeddings [N, d] into a few codes per row with
:class:`ResidualQuantizer` (or one :class:`VectorQuantizer` level), turn codes into
token strings for a generator with :class:`PreferenceTokenizer`, and make codes unique
per item with :func:`append_disambiguation` / ``ResidualQuantizer.encode_unique``, keep
items and their IDs together across catalog updates with :class:`SemanticIdMap`, and judge
IDs with :func:`semantic_id_quality`. :func:`fit_linear_map` maps one embedding space into
another (ridge least squares), e.g. codes' vectors into a generator's token-embedding space.
"""

from ._version import __version__
from .id_map import SemanticIdMap
from .linear_map import fit_linear_map
from .metrics import (
    SemanticIdQuality,
    code_perplexity,
    code_usage,
    homogeneity,
    normalized_mutual_information,
    semantic_id_quality,
    tuple_ids,
)
from .quantizer import (
    AssignmentMode,
    CodebookMode,
    QuantizerOutput,
    QuantizerStats,
    ResidualQuantizer,
    VectorQuantizer,
)
from .safetensors_io import CheckpointError, load_safetensors, read_safetensors_metadata, save_safetensors
from .semantic_ids import append_disambiguation
from .serialization import load_quantizer, save_quantizer
from .tokenizer import DEFAULT_PREFIXES, ModalitySpec, PreferenceTokenizer, TokenParseError
from .training import fit_quantizer

__all__ = [
    "AssignmentMode",
    "DEFAULT_PREFIXES",
    "CheckpointError",
    "CodebookMode",
    "ModalitySpec",
    "PreferenceTokenizer",
    "QuantizerOutput",
    "QuantizerStats",
    "ResidualQuantizer",
    "SemanticIdMap",
    "SemanticIdQuality",
    "TokenParseError",
    "VectorQuantizer",
    "__version__",
    "append_disambiguation",
    "code_perplexity",
    "code_usage",
    "fit_linear_map",
    "fit_quantizer",
    "homogeneity",
    "load_quantizer",
    "load_safetensors",
    "normalized_mutual_information",
    "read_safetensors_metadata",
    "save_quantizer",
    "save_safetensors",
    "semantic_id_quality",
    "tuple_ids",
]
