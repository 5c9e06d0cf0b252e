"""Contrastive losses of MindEye (paper 2.1, Eq. 1-3) and the MixCo voxel augmentation.

Every loss takes predictions P (brain side) and targets T (image side) of shape (B, ...), flattens and
L2-normalises them itself (idempotent if the caller already did), and computes logits = P T^T / tau in
float32 so fp16/bf16 autocast does not degrade the log-softmax at MindEye's tiny temperatures.

Normalisation: the paper writes Eq. 2 and Eq. 3 as sums over the batch; the reference code (and we) take
the mean over the batch, and bidirectional losses average their two directions, i.e.
loss = (Eq. 2 or bidirectional Eq. 3) / (2 * batch). This only rescales the gradient, but it matters for the
relative weight of the prior loss (Eq. 4) and the learning rate, both tuned with the mean convention.

Eq. 2 also writes the (1 - lambda) terms with the unmixed prediction p_i; like the reference we use the
prediction of the mixed input p*_i everywhere (one forward pass per batch), which is the usual MixCo form.

No function here syncs with the host (no ``.item()``, no Python loops over the batch).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# BiMixCo runs at a constant temperature (reference value); SoftCLIP's is annealed by soft_clip_temperature.
BIMIXCO_TEMPERATURE: float = 0.006
SOFTCLIP_TEMPERATURE_START: float = 0.004
SOFTCLIP_TEMPERATURE_END: float = 0.0075


def _logits(preds: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine-similarity logits (B, B) between flattened, L2-normalised preds (rows) and targets (cols)."""
    p = F.normalize(preds.flatten(1).float(), dim=-1)
    t = F.normalize(targets.flatten(1).float(), dim=-1)
    return p @ t.T / temperature


def _soft_ce(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the cross-entropy between row-wise softmax(logits) and soft target rows."""
    return -(logits.log_softmax(dim=-1) * soft_targets).sum(dim=-1).mean()


def info_nce(preds: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """One-directional InfoNCE: each brain sample picks its image among the batch (rows of P T^T)."""
    logits = _logits(preds, targets, temperature)
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def clip_loss(preds: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Bidirectional CLIP loss: mean of brain->image (rows) and image->brain (columns) cross-entropies."""
    logits = _logits(preds, targets, temperature)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def mix_like(x: torch.Tensor, perm: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """lambda_i * x_i + (1 - lambda_i) * x_perm(i), e.g. to mix targets in the same ratio as the voxels."""
    lam = lambdas.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return lam * x + (1 - lam) * x[perm]


def mixco_mix(
    voxels: torch.Tensor, beta: float = 0.15, prob: float = 0.5, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MixCo (Eq. 1): mix each sample, with probability ``prob``, with a random partner.

    Returns (mixed voxels, perm (B,) long, lambdas (B,)): mixed_i = lam_i x_i + (1 - lam_i) x_perm(i) with
    lam_i ~ Beta(beta, beta) for mixed samples and lam_i = 1 (exactly x_i) for the others. ``voxels`` is
    not modified. Without a generator everything is drawn on ``voxels.device`` (no host sync); with a
    (CPU) generator the draws are reproducible and copied to the device.
    """
    n, device = voxels.shape[0], voxels.device
    if generator is None:
        perm = torch.randperm(n, device=device)
        select = torch.rand(n, device=device) < prob
        conc = torch.full((n,), float(beta), device=device)
        lam = torch.distributions.Beta(conc, conc).sample()
    else:
        perm = torch.randperm(n, generator=generator, device=generator.device)
        select = torch.rand(n, generator=generator, device=generator.device) < prob
        # torch's Beta sampler takes no generator; seed numpy's from it instead.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        lam = torch.from_numpy(np.random.default_rng(seed).beta(beta, beta, size=n))
        perm, select, lam = perm.to(device), select.to(device), lam.to(device)
    lambdas = torch.where(select, lam.float(), torch.ones_like(lam, dtype=torch.float32))
    return mix_like(voxels, perm, lambdas), perm, lambdas


def mixco_targets(perm: torch.Tensor, lambdas: torch.Tensor, self_label: str = "assign") -> torch.Tensor:
    """Soft label matrix Y (B, B): Y_ii = lam_i and Y_i,perm(i) = 1 - lam_i.

    The two options differ only where perm(i) == i (a sample paired with itself):
    ``assign`` (the authors' ``utils.mixco_nce``: ``probs[i, perm] = 1 - betas`` overwrites the
    diagonal) gives Y_ii = 1 - lam_i, and 0 for an unmixed sample (lam_i = 1), so that row carries no
    loss; ``add`` gives Y_ii = lam_i + (1 - lam_i) = 1, rows always sum to 1.
    """
    lam = lambdas.float()
    eye = torch.diag(lam)
    if self_label == "assign":
        return eye.scatter(1, perm.view(-1, 1), (1 - lam).view(-1, 1))
    if self_label == "add":
        return eye.scatter_add(1, perm.view(-1, 1), (1 - lam).view(-1, 1))
    raise ValueError(f"self_label must be 'assign' or 'add', got {self_label!r}")


def bimixco_loss(
    preds: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor, lambdas: torch.Tensor, temperature: float,
    self_label: str = "assign",
) -> torch.Tensor:
    """BiMixCo (Eq. 2, batch-mean): mean of the soft CE of rows against Y and of columns against Y^T."""
    logits = _logits(preds, targets, temperature)
    y = mixco_targets(perm, lambdas, self_label).to(logits.device)
    return 0.5 * (_soft_ce(logits, y) + _soft_ce(logits.T, y.T))


def mixco_nce(
    preds: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor, lambdas: torch.Tensor, temperature: float,
    self_label: str = "assign",
) -> torch.Tensor:
    """Unidirectional InfoNCE + MixCo (Table 3): only the brain->image (row) term of BiMixCo."""
    logits = _logits(preds, targets, temperature)
    return _soft_ce(logits, mixco_targets(perm, lambdas, self_label).to(logits.device))


def soft_clip_loss(preds: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """SoftCLIP (Eq. 3, bidirectional, batch-mean) with soft labels softmax(T T^T / tau) row-wise.

    Both directions use the same soft-label matrix: T T^T is symmetric, so the row-wise softmax of it
    equals that of its transpose (the reference also reuses it for the transposed logits).
    """
    t = F.normalize(targets.flatten(1).float(), dim=-1)
    soft = (t @ t.T / temperature).softmax(dim=-1)
    logits = _logits(preds, targets, temperature)
    return 0.5 * (_soft_ce(logits, soft) + _soft_ce(logits.T, soft))


def token_soft_clip_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """The low-level contrastive loss on tokens (the authors' ``train_autoencoder.py`` soft_cont_loss).

    student (B, T, D) and teacher (B, T, D) become (B*T, D), each TOKEN L2-normalised, and SoftCLIP runs
    as a (B*T) x (B*T) problem: every token is contrasted with every token of every image.
    """
    if student.shape[-1] != teacher.shape[-1] or student.numel() != teacher.numel():
        raise ValueError(f"student tokens {tuple(student.shape)} and teacher tokens {tuple(teacher.shape)} differ")
    dim = student.shape[-1]
    return soft_clip_loss(student.reshape(-1, dim), teacher.reshape(-1, dim), temperature)


def token_soft_cont_loss(student: torch.Tensor, teacher: torch.Tensor, teacher_aug: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """The authors' two-view low-level contrastive loss (``utils.soft_cont_loss`` as ``train_autoencoder.py``
    calls it), on tokens.

    student, teacher (the clean image's teacher tokens) and teacher_aug (the augmented image's) are
    (B, T, D), flattened to (B*T, D) and L2-normalised per token. Rows: soft labels
    softmax(teacher . teacher_aug^T / tau), logits student . teacher_aug^T / tau; columns: soft labels
    softmax(teacher_aug . teacher^T / tau), logits teacher_aug . student^T / tau; the mean of the two
    cross-entropies. With teacher_aug = teacher it is :func:`token_soft_clip_loss`.
    """
    if not (student.shape[-1] == teacher.shape[-1] == teacher_aug.shape[-1]
            and student.numel() == teacher.numel() == teacher_aug.numel()):
        raise ValueError(f"student tokens {tuple(student.shape)}, teacher {tuple(teacher.shape)} and augmented "
                         f"teacher {tuple(teacher_aug.shape)} differ")
    dim = student.shape[-1]
    s, t, a = (F.normalize(x.reshape(-1, dim).float(), dim=-1) for x in (student, teacher, teacher_aug))
    labels = (t @ a.T / temperature).softmax(dim=-1)
    labels_t = (a @ t.T / temperature).softmax(dim=-1)
    logits = s @ a.T / temperature
    return 0.5 * (_soft_ce(logits, labels) + _soft_ce(logits.T, labels_t))


def soft_clip_temperature(
    epoch_fraction: float, start: float = SOFTCLIP_TEMPERATURE_START, end: float = SOFTCLIP_TEMPERATURE_END
) -> float:
    """Cosine-annealed SoftCLIP temperature: ``start`` at fraction 0, ``end`` at fraction 1.

    The reference steps it once per SoftCLIP epoch: fraction = k / (n_soft_epochs - 1) for the k-th
    (0-based) epoch after the switch from BiMixCo. Fractions outside [0, 1] are clamped.
    """
    f = min(max(float(epoch_fraction), 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * f))
