# The pipeline class of this folder for diffusers' DiffusionPipeline.from_pretrained (written by
# mousefacelift's MVDiffusionPipeline.save_pretrained; needs mousefacelift installed).
from mousefacelift.mvdiffusion.pipeline import MVDiffusionDiffusersPipeline  # noqa: F401
