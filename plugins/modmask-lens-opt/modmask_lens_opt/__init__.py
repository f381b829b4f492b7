"""modmask-lens adapter for the OPT family, shipped as a separate package (an example of the plugin path)."""

from modmask_lens_opt.adapter import OptAdapter

__all__ = ["OptAdapter"]
