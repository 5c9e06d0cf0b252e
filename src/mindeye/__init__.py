"""mindeye: fMRI-to-image retrieval and reconstruction (MindEye, Scotti et al. 2023)."""

__version__ = "0.1.0"

# The public Python API (docs/python-api.md), imported on first use so `import mindeye` stays light
# (no torch import until a name is touched).
_API = {
    "load_run": "mindeye.runs", "Run": "mindeye.runs",
    "MindEyePipeline": "mindeye.pipeline", "Embeddings": "mindeye.pipeline", "Ranking": "mindeye.pipeline",
    "Retrieval": "mindeye.pipeline", "Reconstruction": "mindeye.pipeline", "save_images": "mindeye.pipeline",
    "MindEyeError": "mindeye.errors",
    "make_image_grid": "mindeye.pipeline", "train": "mindeye.api", "load_store": "mindeye.api",
    "embed": "mindeye.api", "simulate": "mindeye.api", "SubjectStore": "mindeye.data.store",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mindeye' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
