"""img2img strength as the paper defines it (Table 5), and the starting latents it implies.

MindEye's "img2img strength" s is the share of the low-level image kept: s = 1 returns the blurry
low-level reconstruction itself, s = 0 is plain generation from pure noise, and the final model's
s = 0.15 noises the blurry image's latent to the 4th of 20 UniPC timesteps and denoises from there
(the first 15% of the schedule is skipped). This is 1 - diffusers' ``strength``.
"""

from __future__ import annotations

from mindeye.errors import MindEyeError, option


def check_strength(strength: float) -> float:
    if not 0.0 <= strength <= 1.0:
        raise MindEyeError(f"{option('img2img_strength', '--img2img-strength')} must be between 0 (pure noise) and 1 (low-level image only), "
                           f"got {strength}")
    return float(strength)


def img2img_start(strength: float, steps: int) -> int:
    """Index of the first of ``steps`` timesteps that is run: round(strength x steps), in [0, steps]."""
    check_strength(strength)
    if steps < 1:
        raise MindEyeError(f"--steps must be at least 1, got {steps}")
    return min(steps, int(round(strength * steps)))
