"""MindEye2's captions: GIT (``microsoft/git-large-coco``) generating text from predicted bigG tokens.

What ``src/recon_inference.ipynb`` computes: the prior's output (B, 256, 1664) goes through their
``CLIPConverter`` (``Linear(256, 257)`` over tokens, then ``Linear(1664, 1024)`` over channels; weights
``bigG_to_L_epoch8.pth``, ``["model_state_dict"]``) into GIT's CLIP ViT-L/14 image-feature space
(257 x 1024), and ``GitForCausalLMClipEmb.generate(pixel_values=features, max_length=20)`` decodes a
caption. ``GitForCausalLMClipEmb`` (``src/modeling_git.py``) is transformers' GIT with the image encoder
skipped: ``visual_features = pixel_values``. Here transformers' own ``GitForCausalLM`` gets an image
encoder that returns its input, fed as ``(B, 1, 257, 1024)`` so GIT's 4-D branch is taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mindeye.errors import MindEyeError, WeightsUnavailableError

GIT_WEIGHTS = "microsoft/git-large-coco"
CONVERTER_FILE = "bigG_to_L_epoch8.pth"
DOWNLOAD_HINT = (f"Download them with `hf download {GIT_WEIGHTS}` and `hf download pscotti/mindeyev2 {CONVERTER_FILE} "
                 "--repo-type dataset --local-dir DIR` on a machine with network access.")


class BigGToClipL(nn.Module):
    """The authors' ``CLIPConverter``: (B, 256, 1664) bigG tokens -> (B, 257, 1024) CLIP-L features."""

    def __init__(self, seq_in: int = 256, seq_out: int = 257, dim_in: int = 1664, dim_out: int = 1024) -> None:
        super().__init__()
        self.linear1 = nn.Linear(seq_in, seq_out)
        self.linear2 = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear1(x.permute(0, 2, 1))
        return self.linear2(x.permute(0, 2, 1))


class _Passthrough(nn.Module):
    """GIT's image encoder replaced by the identity on (B, 1, T, D) features (``GitForCausalLMClipEmb``)."""

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=pixel_values[:, 0])


class GitCaptioner:
    def __init__(self, git: Any, converter: BigGToClipL, tokenizer: Any) -> None:
        git.git.image_encoder = _Passthrough()
        self.git = git.eval().requires_grad_(False)
        self.converter = converter.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @torch.no_grad()
    def caption(self, tokens: torch.Tensor, max_length: int = 20) -> list[str]:
        """Predicted bigG tokens (B, 256, 1664) -> one caption each (greedy, ``max_length=20`` as theirs)."""
        p = next(self.git.parameters())
        feats = self.converter(tokens.to(p.device, torch.float32)).to(p.dtype)
        ids = self.git.generate(pixel_values=feats[:, None], max_length=max_length)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def load_captioner(git_weights: str | None = None, converter: str | None = None,
                   device: str | torch.device = "cpu") -> GitCaptioner:
    """GIT from an HF id (local cache) or directory, the converter from ``bigG_to_L_epoch8.pth`` (or its dir)."""
    from transformers import AutoTokenizer, GitForCausalLM

    from mindeye.safe_load import load_torch_file
    from mindeye.utils.weights import hf_cache_snapshot

    ref = git_weights or GIT_WEIGHTS
    path = Path(ref).expanduser() if Path(ref).expanduser().exists() else hf_cache_snapshot(ref)
    if path is None:
        raise WeightsUnavailableError(f"caption model {ref} is not available on this machine. {DOWNLOAD_HINT}")
    if converter is None:
        raise WeightsUnavailableError(f"captions need the authors' bigG -> CLIP-L converter ({CONVERTER_FILE}). "
                                      f"{DOWNLOAD_HINT} Then pass its path.")
    conv_path = Path(converter).expanduser()
    conv_path = conv_path / CONVERTER_FILE if conv_path.is_dir() else conv_path
    if not conv_path.is_file():
        raise WeightsUnavailableError(f"{conv_path} not found. {DOWNLOAD_HINT}")
    state = load_torch_file(conv_path, f"it must be the authors' {CONVERTER_FILE}")
    state = state.get("model_state_dict", state) if isinstance(state, dict) else state
    conv = BigGToClipL()
    try:
        conv.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise MindEyeError(f"{conv_path} is not the authors' bigG -> CLIP-L converter ({str(exc).splitlines()[0]})") from None
    git = GitForCausalLM.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return GitCaptioner(git.to(device), conv.to(device), tok)
