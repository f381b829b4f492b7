"""What a bridge's forward pass reads as input: token ids; for an audio encoder a raw waveform, whose length its
convolutional feature extractor turns into positions (frames), or a spectrogram (AST); for a vision encoder an image
(ViT, DeiT)."""

from __future__ import annotations

from modmask_lens.adapters.registry import UnsupportedArchitecture
from modmask_lens.core.bridge import Bridge


def reads_waveform(bridge: Bridge) -> bool:
    """Does ``bridge`` read a float waveform ``[batch, samples]`` rather than token ids (TransformerLens's
    ``cfg.is_audio_model``: HuBERT, Wav2Vec2), and not a spectrogram (:func:`reads_spectrogram`)?"""
    return bool(getattr(bridge.cfg, "is_audio_model", False)) and not reads_spectrogram(bridge)


def reads_spectrogram(bridge: Bridge) -> bool:
    """Does ``bridge`` read a log-mel spectrogram ``[batch, frames, mel_bins]`` (an audio encoder whose config has
    ``max_length`` frames and ``num_mel_bins``: the Audio Spectrogram Transformer)?"""
    config = getattr(getattr(bridge, "original_model", None), "config", None)
    return bool(getattr(bridge.cfg, "is_audio_model", False)) and hasattr(config, "num_mel_bins")


def reads_image(bridge: Bridge) -> bool:
    """Does ``bridge`` read an image ``[batch, channels, height, width]`` (TransformerLens's ``cfg.is_visual_model``:
    ViT, DeiT)?"""
    return bool(getattr(bridge.cfg, "is_visual_model", False))


def feature_shape(bridge: Bridge, positions: int) -> tuple[int, ...] | None:
    """The shape of one example of the float input ``bridge`` reads, or ``None`` for token ids: a waveform of
    :func:`waveform_samples` samples (``positions`` frames); a spectrogram of the config's ``max_length`` frames by
    ``num_mel_bins`` (AST's position table has one entry per patch of exactly that size); an image of the config's
    ``num_channels`` by ``image_size`` (a ViT's position table fixes it). The last two make as many positions as the
    config says, whatever ``positions`` is.

    >>> from modmask_lens.testing.tiny_models import tiny_bridge
    >>> feature_shape(tiny_bridge(), 8) is None
    True
    """
    config = getattr(getattr(bridge, "original_model", None), "config", None)
    if reads_spectrogram(bridge):
        return (int(config.max_length), int(config.num_mel_bins))
    if reads_image(bridge):
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        return (int(config.num_channels), int(height), int(width))
    if reads_waveform(bridge):
        return (waveform_samples(bridge, positions),)
    return None


def waveform_samples(bridge: Bridge, frames: int) -> int:
    """The number of waveform samples from which an audio encoder's convolutional feature extractor makes exactly
    ``frames`` frames (its positions).

    The extractor is a stack of unpadded 1-d convolutions (Hugging Face's ``conv_kernel`` and ``conv_stride``, e.g.
    kernels 10, 3, 3, 3, 3, 2, 2 and strides 5, 2, 2, 2, 2, 2, 2 for HuBERT and Wav2Vec2): one frame sees a receptive
    field of ``1 + sum_i (kernel_i - 1) * prod_{j<i} stride_j`` samples (400 at 16 kHz, 25 ms), and each further
    frame ``prod_i stride_i`` more (320, 20 ms). A shorter input fails inside the model ("Kernel size can't be
    greater than actual input size").

    Raises:
        UnsupportedArchitecture: when ``bridge`` reads no waveform, or its config has no ``conv_kernel`` /
            ``conv_stride`` to count with.
    """
    config = getattr(getattr(bridge, "original_model", None), "config", None)
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if not reads_waveform(bridge) or kernels is None or strides is None:
        raise UnsupportedArchitecture(
            f"{bridge.cfg.architecture}: cannot tell how many waveform samples make {frames} frames (it reads "
            "token ids, or its config has no conv_kernel/conv_stride); give the input yourself"
        )
    receptive_field, hop = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        receptive_field += (kernel - 1) * hop
        hop *= stride
    return receptive_field + hop * (frames - 1)
