"""Architecture adapters: the only place that knows how a model family stores its tensors."""

from modmask_lens.adapters.base import Adapter, ModelShape, TensorSpec, model_shape, query_rows_per_head
from modmask_lens.adapters.derived import DerivedAdapter
from modmask_lens.adapters.inputs import feature_shape, reads_image, reads_spectrogram, reads_waveform, waveform_samples
from modmask_lens.adapters.registry import (
    GranularityNotApplicable,
    UnsupportedArchitecture,
    adapter_for,
    installed_adapters,
    register_adapter,
    unsupported,
)

__all__ = [
    "Adapter",
    "DerivedAdapter",
    "GranularityNotApplicable",
    "ModelShape",
    "TensorSpec",
    "UnsupportedArchitecture",
    "adapter_for",
    "feature_shape",
    "installed_adapters",
    "model_shape",
    "query_rows_per_head",
    "reads_image",
    "reads_spectrogram",
    "reads_waveform",
    "register_adapter",
    "unsupported",
    "waveform_samples",
]
