"""Names and one-line summaries of the frozen encoders, importable without torch (the CLI lists them in
``--help``); :mod:`mindeye.encoders.registry` builds them."""

ENCODER_SUMMARIES: dict[str, str] = {
    "clip-vit-l14-hidden": "OpenAI CLIP ViT-L/14, all 257 tokens projected, / CLS norm -> (257, 768)",
    "clip-vit-l14-final": "OpenAI CLIP ViT-L/14 image embedding, unit norm -> (768,)",
    "sd-vae": "Stable Diffusion VAE latent at 512 px, mode x 0.18215 -> (4, 64, 64); has decode()",
    "vicregl-convnext": "VICRegL ConvNeXt-XL alpha 0.75 local features at 512 px -> (256, 512)",
    "effnet-lite0-pooled": "EfficientNet-Lite0 (ImageNet, extra mindeye[offline]) pooled feature, unit norm -> (1280,); a real network that installs offline, NOT CLIP",
    "openclip-vit-bigg14-tokens": "OpenCLIP ViT-bigG/14 (extra mindeye[mindeye2]) image tokens, ln_post, no proj -> (256, 1664); MindEye2's targets",
    "standin-clip-hidden": "stand-in (random features, not pretrained) for clip-vit-l14-hidden",
    "standin-clip-final": "stand-in (random features, not pretrained) for clip-vit-l14-final",
    "standin-vae": "stand-in (analytic colour-opponent block average) for sd-vae; has decode()",
    "standin-vicregl": "stand-in (random features, not pretrained) for vicregl-convnext",
}
