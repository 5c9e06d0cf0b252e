"""Reconstruction: diffusion-prior samples -> image generator (img2img from the blurry low-level image) -> best-of-N."""
