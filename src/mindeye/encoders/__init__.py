"""Frozen image encoders (CLIP, SD VAE, VICRegL ConvNeXt, stand-ins) and the target cache.

    from mindeye.encoders import get_encoder, embed_store, load_targets

    enc = get_encoder("clip-vit-l14-hidden", weights="/models/clip-vit-large-patch14", device="cuda")
    embed_store("stores/subj01", "clip-vit-l14-hidden", weights="/models/clip-vit-large-patch14")
    targets = load_targets("stores/subj01", "clip-vit-l14-hidden", weights="/models/clip-vit-large-patch14")

See docs/encoders.md.
"""

from mindeye.encoders.base import ImageEncoder
from mindeye.encoders.cache import embed_command, embed_store, find_cache, load_targets, sample_views
from mindeye.encoders.registry import ENCODERS, encoder_fingerprint, encoder_names, get_encoder

__all__ = [
    "ENCODERS",
    "ImageEncoder",
    "embed_command",
    "embed_store",
    "encoder_fingerprint",
    "encoder_names",
    "find_cache",
    "get_encoder",
    "load_targets",
    "sample_views",
]
