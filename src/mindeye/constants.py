"""Numbers fixed by the pretrained networks and the NSD data set, in one place.

Bottom layer (see docs/architecture.md): imports nothing from mindeye, so every layer may use it.
"""

from __future__ import annotations

from typing import Any

# CLIP's image normalisation (openai/clip-vit-large-patch14 preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# torchvision's ImageNet normalisation (AlexNet, Inception, EfficientNet, SwAV, VICRegL).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Stable Diffusion v1's latent scale: latents are stored as posterior mode x 0.18215 (the reference's constant).
SD_LATENT_SCALE = 0.18215
# Architecture of the SD v1 VAE (diffusers AutoencoderKL): for bare state-dict files such as the authors'
# sd_image_var_autoenc.pth and for random-weight benchmarks; real weight folders bring their own config.
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "sample_size": 512, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# CLIP ViT-L/14 vision tower shape (openai/clip-vit-large-patch14), as transformers.CLIPVisionConfig kwargs.
VIT_L14_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
}

# nsdgeneral voxel counts of the NSD subjects (1.8 mm func space), as used by the authors' checkpoints.
NSDGENERAL_VOXELS = {1: 15724, 2: 14278, 3: 15226, 4: 13153, 5: 13039, 6: 17907, 7: 12682, 8: 14386}
# NSD betas version prepared by default (a directory under nsddata_betas/ppdata/subjXX/func1pt8mm/).
DEFAULT_BETAS = "betas_fithrf_GLMdenoise_RR"
