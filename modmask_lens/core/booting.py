"""Booting a Hugging Face model folder as a ``TransformerBridge`` without changing the Python environment.

TransformerLens 4.3's ``boot_transformers`` runs ``pip install torchvision`` (or ``uv pip install``) when it boots a
multimodal family and torchvision is missing (``_ensure_torchvision`` in its transformers source helpers). With the
locked CPU torch that install pulled the newest torch with its CUDA wheels (gigabytes, and torch 2.13.0 replaced by
2.14.1+cu130 in one run here): results would then come from another torch than the lock's. :func:`boot_transformers`
boots with that step reduced to "is torchvision importable?"; a missing torchvision stays missing, and TransformerLens
boots the model without its image processor (text inputs run as before), with a warning naming the extra to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator

from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import transformers as transformers_source


def boot_transformers(name_or_path: str, **options) -> TransformerBridge:
    """``TransformerBridge.boot_transformers(name_or_path, **options)``, never installing a package."""
    with installs_refused():
        return TransformerBridge.boot_transformers(name_or_path, **options)


@contextlib.contextmanager
def installs_refused() -> Iterator[None]:
    """Within the block, TransformerLens's on-the-fly ``pip install torchvision`` only reports whether torchvision is
    importable (and warns once when it is not); restored afterwards, also after an exception. A TransformerLens
    without that helper is left as it is."""
    helpers = getattr(transformers_source, "helpers", None)
    installing = getattr(helpers, "_ensure_torchvision", None)
    if installing is None:
        yield
        return
    helpers._ensure_torchvision = _torchvision_importable
    try:
        yield
    finally:
        helpers._ensure_torchvision = installing


def _torchvision_importable() -> bool:
    if importlib.util.find_spec("torchvision") is not None:
        return True
    warnings.warn(
        "this model's image processor needs torchvision, which is not installed; modmask-lens does not let "
        "TransformerLens pip-install it (that replaces the locked CPU torch): the model boots without its image "
        "processor. Install a torchvision matching your torch yourself if you need images",
        stacklevel=2,
    )
    return False
