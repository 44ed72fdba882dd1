"""Networks. ``Unet`` mirrors lucidrains' denoising-diffusion-pytorch U-Net (1.8.x and 2.x)."""

from btd_jax.models.unet import Unet

__all__ = ["Unet"]
