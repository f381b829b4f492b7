"""Differentiable weight masks (Csordás et al. 2021) on TransformerLens 4.x bridges."""
