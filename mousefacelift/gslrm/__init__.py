"""GS-LRM: FaceLift-compatible model (model.py), losses (losses.py), data (data.py), training (train.py)."""
from .model import GSLRM, GaussianOutput, GSLRMConfig, from_pretrained, load_gslrm_checkpoint

__all__ = ["GSLRM", "GSLRMConfig", "GaussianOutput", "load_gslrm_checkpoint", "from_pretrained"]
