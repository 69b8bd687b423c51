"""Multi-view diffusion (FaceLift's MVDiffusion, on diffusers' UNet): model, sampling, quality,
synthetic samples, training.

    from mousefacelift.mvdiffusion import MVDiffusionPipeline, SamplerConfig
    pipe = MVDiffusionPipeline.from_pretrained("runs/demo/mvdiffusion/pipeline")
    views = pipe(reference, reference_w2c, target_w2c, target_K, SamplerConfig(steps=25))

Training lives in :mod:`mousefacelift.mvdiffusion.train` (imported on demand).
"""
from .model import (MVDiffusionConfig, MVDiffusionModel, MultiViewAttnProcessor, relative_ray_map,
                    set_multiview_attention, widen_conv_in)
from .pipeline import FaceLiftLoadConfig, MVDiffusionPipeline, SamplerConfig, resize_views
from .quality import evaluate, held_out_views, quality_vs_steps, validation_grid, view_metrics
from .synthetic import SyntheticConfig, compare_synthetic, generate_synthetic

__all__ = ["MVDiffusionConfig", "MVDiffusionModel", "MultiViewAttnProcessor", "relative_ray_map",
           "set_multiview_attention", "widen_conv_in", "FaceLiftLoadConfig", "MVDiffusionPipeline", "SamplerConfig",
           "SyntheticConfig", "evaluate", "held_out_views", "view_metrics", "compare_synthetic", "generate_synthetic",
           "quality_vs_steps", "resize_views", "validation_grid"]
