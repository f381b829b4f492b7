"""BERT adapter (encoder with a masked-LM head): post-LN blocks, token-type embeddings, an MLM transform.

TransformerLens names BERT's extra tensors ``token_type_embed`` (embedding), ``embed_ln`` (the embedding LayerNorm),
``mlm_head`` (``cls.predictions.transform.dense``); ``ln_final`` is the MLM transform's LayerNorm and ``unembed`` the
decoder. ``cls.predictions.bias`` is the decoder's bias under another name: only the decoder path is read, so it is
not a separate target. ``ln1``/``ln2`` are the post-attention and post-MLP LayerNorms.

Why hand-written (TransformerLens's map is not enough): it puts BERT's post-norms in the ``ln1``/``ln2`` slots its
own guide reserves for the norms in front of attention and MLP, with nothing in the map saying so, so a derived
adapter would place the norm in front of each reader wrongly; and the decoder-bias alias must not be read as a
tensor of its own. The token-type embedding, the embedding LayerNorm and the MLM transform take their roles from
:data:`~modmask_lens.adapters.base.TOP_LEVEL_ROLES`, as in RoBERTa.
"""

from __future__ import annotations

from typing import ClassVar

from modmask_lens.adapters.base import Adapter
from modmask_lens.adapters.norms import NormPlacement


class BertAdapter(Adapter):
    """Adapter for ``BertForMaskedLM`` and ``BertLMHeadModel`` bridges (the same modules under TransformerLens)."""

    name: ClassVar[str] = "bert"
    architectures: ClassVar[tuple[str, ...]] = ("BertForMaskedLM", "BertLMHeadModel")
    norm_placement: ClassVar[NormPlacement] = "post"
    unread_keys: ClassVar[tuple[str, ...]] = ("cls.predictions.bias",)
