"""Multi-view diffusion (FaceLift's MVDiffusion, on diffusers' UNet): model, sampling, training.

    from mousefacelift.mvdiffusion import MVDiffusionPipeline, SamplerConfig
    pipe = MVDiffusionPipeline.from_pretrained("runs/demo/mvdiffusion/pipeline")
    views = pipe(reference, reference_w2c, target_w2c, target_K, SamplerConfig(steps=25))

Training lives in :mod:`mousefacelift.mvdiffusion.train` (imported on demand).
"""
from .model import (MVDiffusionConfig, MVDiffusionModel, MultiViewAttnProcessor, relative_ray_map,
                    set_multiview_attention, widen_conv_in)
from .pipeline import (FaceLiftLoadConfig, MVDiffusionPipeline, SamplerConfig, SyntheticConfig, evaluate,
                       foreground_psnr, generate_synthetic, quality_vs_steps, resize_views, validation_grid)

__all__ = ["MVDiffusionConfig", "MVDiffusionModel", "MultiViewAttnProcessor", "relative_ray_map",
           "set_multiview_attention", "widen_conv_in", "FaceLiftLoadConfig", "MVDiffusionPipeline", "SamplerConfig",
           "SyntheticConfig", "evaluate", "foreground_psnr", "generate_synthetic", "quality_vs_steps",
           "resize_views", "validation_grid"]
