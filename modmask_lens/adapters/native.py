"""Adapter for TransformerLens-native models (``TransformerBridge.boot_native``).

Native models use plain ``nn.Linear`` everywhere (split q/k/v/o, ``fc_in``/``fc_out`` or gated ``gate``/``in``/``out``),
so the generic resolution of the base adapter is all they need; grouped-query attention comes from
``cfg.n_key_value_heads``.
"""

from __future__ import annotations

from typing import ClassVar

from modmask_lens.adapters.base import Adapter


class NativeAdapter(Adapter):
    """Adapter for bridges built by ``TransformerBridge.boot_native``."""

    name: ClassVar[str] = "native"
    architectures: ClassVar[tuple[str, ...]] = ("TransformerLensNative",)
