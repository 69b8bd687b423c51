"""One sample through a trained GS-LRM: its Gaussians and renders of its target views, for figures,
turntables and PLY export (notebooks 06 and 07). Scores use :mod:`mousefacelift.metrics`, the same
functions as :func:`mousefacelift.gslrm.train.evaluate`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import metrics
from ..gaussians import Gaussians
from .data import GSLRMDataset, collate
from .model import GSLRM


@dataclass
class Prediction:
    """One sample. Images on white, S = the model's image size, Vt target views.

    index: sample index in the dataset; input_views [Vi] and target_views [Vt]: view positions in
    the sample; target_is_input [Vt] bool; gt_rgb / rgb [Vt, 3, S, S]; gt_alpha / alpha
    [Vt, 1, S, S]; scores: {"psnr_fg", "psnr_full", "ssim_fg", "mask_iou"} each [Vt] (NaN where
    undefined); gaussians: the predicted scene (CPU, fp32). Tensors on the CPU.
    """
    index: int
    input_views: torch.Tensor
    target_views: torch.Tensor
    target_is_input: torch.Tensor
    gt_rgb: torch.Tensor
    gt_alpha: torch.Tensor
    rgb: torch.Tensor
    alpha: torch.Tensor
    scores: dict[str, torch.Tensor]
    gaussians: Gaussians

    @property
    def held_out(self) -> torch.Tensor:
        """Positions (in the target list) of the targets that were not inputs, [k] long."""
        return (~self.target_is_input).nonzero()[:, 0]


@torch.no_grad()
def predict_sample(model: GSLRM, dataset: GSLRMDataset, index: int, bf16: bool = False) -> Prediction:
    """Run ``model`` on item ``index`` of ``dataset`` (its inputs as the dataset chooses them at step 0)
    and render every target view. The model's device decides where it runs; bf16 autocast is used
    for the transformer only on CUDA and only when ``bf16``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    b = {k: v.to(device) for k, v in collate([dataset[index]]).items()}
    S = b["target_images"].shape[-1]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
        g = model(b["input_images"], b["input_c2w"], b["input_K"])
    r = g.render(b["target_w2c"], b["target_K"], S, S)
    rgb, alpha = r.rgb.permute(0, 1, 4, 2, 3)[0], r.alpha.permute(0, 1, 4, 2, 3)[0]  # [Vt, 3|1, S, S]
    scores = metrics.image_metrics(rgb, alpha, b["target_images"][0], b["target_alpha"][0])
    model.train(was_training)
    cpu = lambda t: t.detach().float().cpu()  # noqa: E731
    return Prediction(index=index, input_views=b["input_views"][0].cpu(), target_views=b["target_views"][0].cpu(),
                      target_is_input=b["target_is_input"][0].cpu(), gt_rgb=cpu(b["target_images"][0]),
                      gt_alpha=cpu(b["target_alpha"][0]), rgb=cpu(rgb), alpha=cpu(alpha),
                      scores={k: cpu(v) for k, v in scores.items()}, gaussians=g.scene(0).to("cpu"))


__all__ = ["Prediction", "predict_sample"]
