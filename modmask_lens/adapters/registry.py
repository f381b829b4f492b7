"""Finding the adapter for a bridge: hand-written adapters (built in, or registered under the ``modmask_lens.adapters``
entry-point group by installed packages) where a family needs one; for every other family, the adapter derived from
TransformerLens's own architecture map."""

from __future__ import annotations

from importlib.metadata import entry_points

from modmask_lens.adapters.base import Adapter
from modmask_lens.adapters.bert import BertAdapter
from modmask_lens.adapters.bitnet import BitNetAdapter
from modmask_lens.adapters.deepseek_v4 import DeepseekV4Adapter
from modmask_lens.adapters.derived import DerivedAdapter
from modmask_lens.adapters.granite_moe_hybrid import GraniteMoeHybridAdapter
from modmask_lens.adapters.jetmoe import JetMoeAdapter
from modmask_lens.adapters.nemotron_h import NemotronHAdapter
from modmask_lens.adapters.recurrent_gemma import RecurrentGemmaAdapter
from modmask_lens.adapters.zamba2 import Zamba2Adapter
from modmask_lens.core.bridge import Bridge

ENTRY_POINT_GROUP = "modmask_lens.adapters"
_BUILT_IN: tuple[type[Adapter], ...] = (
    BertAdapter,
    BitNetAdapter,
    DeepseekV4Adapter,
    GraniteMoeHybridAdapter,
    JetMoeAdapter,
    NemotronHAdapter,
    RecurrentGemmaAdapter,
    Zamba2Adapter,
    DerivedAdapter,
)


_REGISTERED: dict[str, type[Adapter]] = {}


class UnsupportedArchitecture(LookupError):
    """No installed adapter handles a model's architecture (for what was asked of it)."""


class GranularityNotApplicable(UnsupportedArchitecture):
    """A granularity has no meaning for a model (heads of a model without attention, neurons of one without MLPs);
    no adapter could add it."""


def register_adapter(adapter: type[Adapter]) -> type[Adapter]:
    """Use ``adapter`` in this process without packaging it (e.g. while writing it in a notebook); it takes
    precedence over installed adapters for its architectures. Usable as a class decorator."""
    if not (isinstance(adapter, type) and issubclass(adapter, Adapter)):
        raise TypeError(f"{adapter!r} is not a subclass of modmask_lens.adapters.Adapter")
    _REGISTERED[adapter.name] = adapter
    return adapter


def installed_adapters() -> dict[str, type[Adapter]]:
    """Adapters by name: registered in this process, built in, then entry points (later ones never shadow a name)."""
    adapters = dict(_REGISTERED)
    for adapter in _BUILT_IN:
        adapters.setdefault(adapter.name, adapter)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        adapter = entry_point.load()
        if not (isinstance(adapter, type) and issubclass(adapter, Adapter)):
            raise TypeError(
                f"entry point {entry_point.name!r} in group {ENTRY_POINT_GROUP!r} gives {adapter!r}, "
                "not a subclass of modmask_lens.adapters.Adapter"
            )
        adapters.setdefault(adapter.name, adapter)
    return adapters


def unsupported(architecture: object, what: str) -> UnsupportedArchitecture:
    """The error for a family without an adapter: names it, the installed adapters, and how to add one."""
    return UnsupportedArchitecture(
        f"{architecture}: no adapter{what}; installed: {', '.join(sorted(installed_adapters()))}. "
        "Write one (a subclass of modmask_lens.adapters.Adapter) and register it under the "
        f"'{ENTRY_POINT_GROUP}' entry-point group; see CONTRIBUTING.md#adapters"
    )


def adapter_for(bridge: Bridge) -> Adapter:
    """The adapter whose ``architectures`` contains ``bridge.cfg.architecture``, else the one derived from the
    TransformerLens architecture adapter that booted ``bridge`` (:class:`~modmask_lens.adapters.DerivedAdapter`).

    Raises:
        UnsupportedArchitecture: when ``bridge`` is not a TransformerLens bridge (it has no ``cfg.architecture``).
    """
    architecture = getattr(getattr(bridge, "cfg", None), "architecture", None)
    if architecture is None:
        raise unsupported(type(bridge).__name__, " (not a TransformerBridge: no cfg.architecture)")
    for adapter in installed_adapters().values():
        if architecture in adapter.architectures:
            return adapter.for_bridge(bridge)
    return DerivedAdapter.for_bridge(bridge)
