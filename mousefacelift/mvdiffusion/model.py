"""Multi-view diffusion UNet: diffusers' ``UNet2DConditionModel`` + multi-view self-attention.

What the model sees (one object = V views, contiguous in the batch: the ``(b v)`` layout):

* ``conv_in`` input per view = ``[noisy view (C) ; reference image (C) ; camera ray map (6)]``.
  The reference image is the same for every view of an object (FaceLift's concatenated latent).
* The camera ray map is the per-pixel ray of each view, at the UNet's resolution, expressed in the
  REFERENCE camera's frame: ``[d_ref (3) ; p0_ref (3)]`` with ``d_ref = R_ref d`` (unit direction)
  and ``p0_ref = R_ref p0`` (``p0`` = point of the ray closest to the object centre, the world
  origin of the normalized space). Only the pose relative to the reference camera enters, so one
  model serves any rig. Its ``conv_in`` channels start at zero when a checkpoint is adapted
  (:func:`widen_conv_in`), so a FaceLift UNet starts out unchanged.
* Optionally (``camera_embedding``, from-scratch models) a per-view camera code as well: the mean and
  standard deviation of each ray-map channel over the view's pixels (12 numbers, zero when the
  camera is dropped) enter every view's timestep embedding through diffusers' ``time_cond_proj_dim``
  (a bias-free projection), so the camera reaches every resolution of the UNet, not only ``conv_in``.
* Every self-attention (``attn1``) runs :class:`MultiViewAttnProcessor`: "sparse" (FaceLift's
  default) lets view i attend to ``[reference-view tokens ; its own tokens]``, "dense" to all
  views of its object. No new weights: it reuses ``attn1``'s projections.
* Cross-attention context: FaceLift's fixed per-view prompt embeddings ``[V, 77, 1024]``
  (``context="prompt_embeds"``), or, for a model trained from scratch, one learned context shared
  by all views (``"learned"``; view identity comes from the ray map, never from batch position) or
  zeros (``"zero"``).

Why pixel space for the embedded default: at 64-128 px a pixel-space UNet is small enough to
train from scratch in minutes to hours, there is no autoencoder to train or to trust (a VAE trained
on a few hundred mouse crops would blur exactly the fine detail we evaluate), the alpha channel is
just a 4th channel (masks come out of the model), and the evaluation protocol's PSNR_fg is computed
on what the UNet itself produced. FaceLift's released UNet works on SD-2.1 latents; that path is
supported through :class:`~mousefacelift.mvdiffusion.pipeline.VAECodec`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config

from .. import cameras
from ..configs import bounded, check_ranges

log = logging.getLogger(__name__)

ATTENTION_MODES = ("sparse", "dense")
CONTEXT_MODES = ("learned", "zero", "prompt_embeds")
RAY_CHANNELS = 6  # [d_ref (3) ; p0_ref (3)]


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class MVDiffusionConfig:
    """A UNet trained from scratch in pixel space (RGBA in [-1, 1]). Defaults: the 64 px demo."""
    image_size: int = bounded(64, min=8)    # pixels per side the UNet works at
    image_channels: int = bounded(4, min=1)  # RGBA (alpha = mask, predicted like any channel)
    num_views: int = bounded(6, min=1)      # views per object in a training batch
    attention_mode: str = "sparse"          # sparse: [reference ; own] tokens; dense: all views
    reference_view: int = bounded(0, min=0)  # batch position of the reference view in each object
    camera_conditioning: bool = True        # ray map (reference-camera frame) as 6 conv_in channels
    camera_embedding: bool = False          # also the pooled ray map (12 numbers) in every view's timestep embedding
    block_out_channels: tuple[int, ...] = bounded((64, 128, 256, 256), min=1)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                       "UpBlock2D")
    layers_per_block: int = bounded(2, min=1)
    attention_heads: int = bounded(4, min=1)  # diffusers' legacy name for it: attention_head_dim
    norm_num_groups: int = bounded(32, min=1)
    cross_attention_dim: int = bounded(128, min=1)  # width of the (learned or zero) context tokens
    context: str = "learned"                # learned | zero | prompt_embeds
    context_tokens: int = bounded(1, min=1)  # tokens of the learned / zero context

    def __post_init__(self):
        check_ranges(self)
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode {self.attention_mode!r} is not one of {ATTENTION_MODES}")
        if self.context not in CONTEXT_MODES:
            raise ValueError(f"context {self.context!r} is not one of {CONTEXT_MODES}")
        if self.camera_embedding and not self.camera_conditioning:
            raise ValueError("camera_embedding needs camera_conditioning (it pools the ray map)")
        if not 0 <= self.reference_view < self.num_views:
            raise ValueError(f"reference_view {self.reference_view} must be in [0, {self.num_views})")
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)

    @classmethod
    def tiny(cls, **overrides) -> "MVDiffusionConfig":
        """A model small enough for CPU tests (32 px, about 1 M parameters)."""
        base = dict(image_size=32, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1, attention_heads=2,
                    norm_num_groups=8, cross_attention_dim=32)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def scaled(cls, base_channels: int, channel_mults: tuple[int, ...], **overrides) -> "MVDiffusionConfig":
        """A UNet of ``len(channel_mults)`` levels with ``base_channels * m`` channels each; the
        first level has no attention (as the default), the others have cross-attention blocks."""
        if not channel_mults or base_channels <= 0:
            raise ValueError(f"need base_channels > 0 and at least one level, got {base_channels}, {channel_mults}")
        n = len(channel_mults)
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
        up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
        return cls(block_out_channels=tuple(base_channels * m for m in channel_mults), down_block_types=down,
                   up_block_types=up, **overrides)

    def unet_config(self) -> dict:
        """The ``UNet2DConditionModel`` config this describes."""
        cam = RAY_CHANNELS if self.camera_conditioning else 0
        extra = {"time_cond_proj_dim": 2 * RAY_CHANNELS} if self.camera_embedding else {}
        return dict(**extra, sample_size=self.image_size, in_channels=2 * self.image_channels + cam,
                    out_channels=self.image_channels, block_out_channels=list(self.block_out_channels),
                    down_block_types=list(self.down_block_types), up_block_types=list(self.up_block_types),
                    mid_block_type="UNetMidBlock2DCrossAttn", layers_per_block=self.layers_per_block,
                    attention_head_dim=self.attention_heads, norm_num_groups=self.norm_num_groups,
                    cross_attention_dim=self.cross_attention_dim)


# ----------------------------------------------------------------------------------------------
# Multi-view attention
# ----------------------------------------------------------------------------------------------
def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, L, H*D] -> [N, H, L, D]."""
    n, length, inner = x.shape
    return x.view(n, length, heads, inner // heads).transpose(1, 2)


class MultiViewAttnProcessor:
    """Self-attention across the views of each object (for ``attn1``). Batch layout ``(b v)``:
    ``hidden_states [B*V, L, C]`` with the V views of an object contiguous; ``num_views`` V comes
    through ``cross_attention_kwargs`` (:class:`MVDiffusionModel` passes it).

    sparse: view i attends to ``[tokens of view reference_view ; tokens of view i]``
    dense:  view i attends to the tokens of all V views of its object.
    With ``encoder_hidden_states`` given (cross-attention) it is plain attention.
    """

    def __init__(self, mode: str = "sparse", reference_view: int = 0):
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode {mode!r} is not one of {ATTENTION_MODES}")
        self.mode = mode
        self.reference_view = reference_view

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 num_views: int = 1) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("MultiViewAttnProcessor does not support attention masks")
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise ValueError("MultiViewAttnProcessor expects transformer attention on [N, L, C] tokens "
                             "(no spatial/group norm); it is meant for UNet2DConditionModel's attn1/attn2")
        residual = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q = _heads(attn.to_q(hidden_states), attn.heads)  # [N, H, L, D]
        k = _heads(attn.to_k(context), attn.heads)
        v = _heads(attn.to_v(context), attn.heads)
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is None and num_views > 1:
            out = self._multiview(q, k, v, num_views, attn.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        n, h, length, d = out.shape
        out = out.transpose(1, 2).reshape(n, length, h * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _multiview(self, q, k, v, num_views: int, scale: float) -> torch.Tensor:
        """q, k, v [B*V, H, L, D] -> [B*V, H, L, D]."""
        n, h, length, d = q.shape
        if n % num_views:
            raise ValueError(f"batch of {n} views is not a whole number of objects of {num_views} views")
        b = n // num_views
        if self.mode == "dense":
            # every token of an object attends to all V*L tokens of that object
            def obj(x):
                return x.view(b, num_views, h, length, d).transpose(1, 2).reshape(b, h, num_views * length, d)
            out = F.scaled_dot_product_attention(obj(q), obj(k), obj(v), scale=scale)
            return out.view(b, h, num_views, length, d).transpose(1, 2).reshape(n, h, length, d)
        # sparse: keys/values of view i = [reference view ; view i]
        ref = self.reference_view
        if not 0 <= ref < num_views:
            raise ValueError(f"reference_view {ref} is outside the {num_views} views of an object")

        def with_ref(x):
            x = x.view(b, num_views, h, length, d)
            x_ref = x[:, ref:ref + 1].expand_as(x)
            return torch.cat([x_ref, x], dim=3).reshape(n, h, 2 * length, d)
        return F.scaled_dot_product_attention(q, with_ref(k), with_ref(v), scale=scale)


def set_multiview_attention(unet: UNet2DConditionModel, mode: str = "sparse", reference_view: int = 0) -> None:
    """Install :class:`MultiViewAttnProcessor` on every attention of ``unet`` (multi-view on the
    self-attentions ``attn1``, plain on the cross-attentions, which take ``num_views`` too)."""
    procs = {}
    for name in unet.attn_processors:
        procs[name] = MultiViewAttnProcessor(mode, reference_view)
    unet.set_attn_processor(procs)


# ----------------------------------------------------------------------------------------------
# Adapting a checkpoint and the camera ray map
# ----------------------------------------------------------------------------------------------
def widen_conv_in(unet: UNet2DConditionModel, extra_channels: int) -> UNet2DConditionModel:
    """Append ``extra_channels`` zero-initialised input channels to ``unet.conv_in`` (in place; the
    config's ``in_channels`` follows). The UNet's output is unchanged for any values fed to them."""
    if extra_channels <= 0:
        return unet
    old = unet.conv_in
    new = torch.nn.Conv2d(old.in_channels + extra_channels, old.out_channels, old.kernel_size, old.stride,
                          old.padding, bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet


def relative_ray_map(w2c: torch.Tensor, K: torch.Tensor, reference_w2c: torch.Tensor, height: int,
                     width: int) -> torch.Tensor:
    """Camera conditioning of each view, relative to the reference camera.

    w2c [B, V, 4, 4] (OpenCV, normalized world: object at the origin); K [B, V, 3, 3] for an image
    of ``height x width`` (the UNet resolution: scale K first); reference_w2c [B, 4, 4]
    -> ray map [B, V, 6, height, width] = [R_ref d ; R_ref p0] per pixel centre, where d is the
    unit world ray and p0 its point closest to the world origin.
    """
    origins, dirs = cameras.pixel_rays(cameras.invert_rigid(w2c), K, height, width)  # [B, V, H, W, 3]
    p0 = cameras.closest_point_to_origin(origins, dirs)
    R_ref = reference_w2c[:, None, None, None, :3, :3]  # world -> reference camera axes
    d_ref = (R_ref @ dirs.unsqueeze(-1)).squeeze(-1)
    p0_ref = (R_ref @ p0.unsqueeze(-1)).squeeze(-1)
    return torch.cat([d_ref, p0_ref], dim=-1).permute(0, 1, 4, 2, 3).contiguous()


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
class MVDiffusionModel(ModelMixin, ConfigMixin):
    """``UNet2DConditionModel`` (``self.unet``) with multi-view attention, concatenated reference
    and ray-map conditioning, and its cross-attention context. Saved with ``save_pretrained`` as
    ``config.json`` + ``diffusion_pytorch_model.safetensors`` (the context is a parameter or
    buffer in the same file)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, unet_config: dict, image_channels: int = 4, camera_channels: int = RAY_CHANNELS,
                 num_views: int = 6, attention_mode: str = "sparse", reference_view: int = 0,
                 context_mode: str = "learned", context_shape: tuple[int, int, int] = (1, 1, 128)):
        super().__init__()
        if context_mode not in CONTEXT_MODES:
            raise ValueError(f"context_mode {context_mode!r} is not one of {CONTEXT_MODES}")
        expected = 2 * image_channels + camera_channels
        if unet_config["in_channels"] != expected:
            raise ValueError(f"unet in_channels {unet_config['in_channels']} != 2 * {image_channels} image "
                             f"channels + {camera_channels} camera channels")
        self.unet = UNet2DConditionModel.from_config(unet_config)
        set_multiview_attention(self.unet, attention_mode, reference_view)
        if context_mode == "learned":
            self.context = torch.nn.Parameter(torch.randn(*context_shape) * 0.02)
        else:  # zero or prompt_embeds: a fixed tensor saved with the weights
            self.register_buffer("context", torch.zeros(*context_shape))

    @classmethod
    def from_dataclass(cls, config: MVDiffusionConfig, seed: int = 0) -> "MVDiffusionModel":
        """A freshly initialised model; ``seed`` fixes the initial weights (the global RNG is left as it was)."""
        tokens = config.context_tokens
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(unet_config=config.unet_config(), image_channels=config.image_channels,
                       camera_channels=RAY_CHANNELS if config.camera_conditioning else 0,
                       num_views=config.num_views, attention_mode=config.attention_mode,
                       reference_view=config.reference_view, context_mode=config.context,
                       context_shape=(1, tokens, config.cross_attention_dim))

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, image_channels: int, camera_channels: int, num_views: int,
                  attention_mode: str = "sparse", reference_view: int = 0, context: str = "prompt_embeds",
                  context_tensor: torch.Tensor | None = None) -> "MVDiffusionModel":
        """Wrap an existing (e.g. FaceLift) UNet. ``camera_channels > 0`` widens ``conv_in`` with
        zero-initialised ray-map channels first. context_tensor [1 or V, T, D] is the fixed context
        (e.g. FaceLift's prompt embeddings)."""
        widen_conv_in(unet, camera_channels)
        D = unet.config.cross_attention_dim
        shape = tuple(context_tensor.shape) if context_tensor is not None else (1, 1, D)
        unet_config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        model = cls(unet_config=unet_config, image_channels=image_channels, camera_channels=camera_channels,
                    num_views=num_views, attention_mode=attention_mode, reference_view=reference_view,
                    context_mode=context, context_shape=shape)
        model.unet.load_state_dict(unet.state_dict(), strict=True)
        if context_tensor is not None:
            with torch.no_grad():
                model.context.copy_(context_tensor)
        return model.to(unet.device, unet.dtype)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, reference: torch.Tensor,
                rays: torch.Tensor | None = None, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the diffusion target (epsilon or v, as the scheduler was trained) for every view.

        noisy [B, V, C, h, w]; timesteps [B] or scalar (one noise level per object); reference
        [B, C, h, w] (zeros = dropped); rays [B, V, 6, h, w] from :func:`relative_ray_map` (None or
        zeros = dropped; required shape when the model has camera channels); class_labels [B, P]
        (FaceLift's image-embedding label; None when the UNet has no class embedding)
        -> prediction [B, V, C, h, w].
        """
        B, V, C, h, w = noisy.shape
        parts = [noisy, reference[:, None].expand(B, V, C, h, w)]
        if self.config.camera_channels:
            if rays is None:
                rays = noisy.new_zeros(B, V, self.config.camera_channels, h, w)
            parts.append(rays.to(noisy.dtype))
        x = torch.cat(parts, dim=2).reshape(B * V, -1, h, w)
        t = torch.as_tensor(timesteps, device=noisy.device).reshape(-1)
        t = (t.expand(B) if t.numel() == 1 else t).repeat_interleave(V)
        ctx = self.context.to(noisy.dtype)
        ctx = ctx.expand(V, -1, -1) if ctx.shape[0] == 1 else ctx
        if ctx.shape[0] != V:
            raise ValueError(f"the model's per-view context has {ctx.shape[0]} views but the batch has {V}; "
                             "FaceLift's prompt embeddings only serve its 6-view rig")
        ctx = ctx.repeat(B, 1, 1)
        cond = None
        if self.unet.config.time_cond_proj_dim:  # camera_embedding: per-view code from the pooled ray map
            r = rays.float().flatten(3)                                               # [B, V, 6, h*w]
            cond = torch.cat([r.mean(-1), r.std(-1, unbiased=False)], -1).reshape(B * V, -1).to(noisy.dtype)
        if class_labels is not None:
            class_labels = class_labels.to(noisy.dtype).repeat_interleave(V, dim=0)
        out = self.unet(x, t, encoder_hidden_states=ctx, class_labels=class_labels, timestep_cond=cond,
                        cross_attention_kwargs={"num_views": V}).sample
        return out.view(B, V, -1, h, w)


def config_to_dict(config: MVDiffusionConfig) -> dict:
    """A JSON-ready dict of the dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


__all__ = ["MVDiffusionConfig", "MVDiffusionModel", "MultiViewAttnProcessor", "set_multiview_attention",
           "widen_conv_in", "relative_ray_map", "config_to_dict"]
