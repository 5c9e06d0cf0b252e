"""Frozen image encoders (CLIP, SD VAE, VICRegL ConvNeXt, stand-ins) and the target cache.

    from mindeye.encoders import get_encoder, embed_store, load_targets

    enc = get_encoder("clip-vit-l14-hidden", weights="/models/clip-vit-large-patch14", device="cuda")
    embed_store("stores/subj01", "clip-vit-l14-hidden", weights="/models/clip-vit-large-patch14")
    targets = load_targets("stores/subj01", "clip-vit-l14-hidden", weights="/models/clip-vit-large-patch14")

See docs/encoders.md.
"""

# Imported on first use, so light submodules (``mindeye.encoders.catalog``: the names `mindeye --help`
# lists) load without torch.
_LAZY = {
    "ImageEncoder": "base", "embed_command": "cache", "embed_store": "cache", "find_cache": "cache",
    "load_targets": "cache", "sample_views": "cache", "ENCODERS": "registry", "encoder_fingerprint": "registry",
    "encoder_names": "registry", "get_encoder": "registry",
}

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


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"mindeye.encoders.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mindeye.encoders' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
