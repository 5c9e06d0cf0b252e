"""mindeye: fMRI-to-image retrieval and reconstruction (MindEye, Scotti et al. 2023)."""

__version__ = "0.1.0"
