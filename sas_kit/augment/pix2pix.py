"""pix2pix networks for mask → grayscale ultrasound: a U-Net generator and a conditional PatchGAN discriminator.

Architecture as Isola et al. 2017 (and GenSeg's pix2pix): a U-Net with ``log2(size)`` stride-2 4x4 convolutions
down to a 1x1 bottleneck, skip connections, ReLU/LeakyReLU(0.2), dropout 0.5 in the inner 8·ngf decoder blocks
(the only noise source of pix2pix), tanh output; a 3-layer PatchGAN (70x70 receptive field at full size) that
scores (mask, image) pairs; conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0.

Kit choices, measured on a 2-core CPU (2 torch threads, batch 4, one G + D step forward and backward):
128² ngf=ndf=16: 0.04 s; 128² 32: 0.18 s; 256² 16: 0.125 s; 256² 32: 0.5 s.
- resolution 128², ngf = ndf = 16 (pix2pix: 256², 64): in the 60-120 s budget this trains ~1500 steps (60 epochs of
  100 images), 3x more than 256² at the same width and 4.5x more than 128² at width 32 (more steps rather than more
  width: a choice, not compared here). BUS-BRA lesions stay several pixels wide at 128², and the synthetic image is resized
  back to the mask's own size.
- instance norm (pix2pix's ``--norm instance``) instead of batch norm: no running statistics, so ``eval()`` only
  turns dropout off and the generator behaves at synthesis as in training.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def check_size(size: int) -> int:
    """``size`` must be a power of two in [32, 1024] (the U-Net halves it down to 1x1; PatchGAN needs >= 32)."""
    if not isinstance(size, int) or size < 32 or size > 1024 or size & (size - 1):
        raise ValueError(f"size must be a power of two between 32 and 1024 (e.g. 64, 128, 256), got {size!r}")
    return size


class UNetGenerator(nn.Module):
    """Mask (N x in_ch x S x S, values in [-1, 1]) → image (N x out_ch x S x S, tanh in [-1, 1]).

    ``log2(size)`` down-sampling blocks; channels ngf·min(2^i, 8). ``dropout`` puts Dropout(0.5) in the decoder
    blocks of width 8·ngf below the four outer ones (pix2pix); they are active in ``train()`` only."""

    def __init__(self, size: int = 128, in_ch: int = 1, out_ch: int = 1, ngf: int = 16, dropout: bool = True):
        super().__init__()
        self.size = check_size(size)
        n = int(math.log2(size))
        ch = [ngf * min(2**i, 8) for i in range(n)]
        downs = []
        for i in range(n):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            layers.append(nn.Conv2d(in_ch if i == 0 else ch[i - 1], ch[i], 4, 2, 1))
            if 0 < i < n - 1:  # no norm on the outermost input conv nor at the 1x1 bottleneck
                layers.append(_norm(ch[i]))
            downs.append(nn.Sequential(*layers))
        ups = []
        for i in range(n):
            c_in = ch[i] if i == n - 1 else 2 * ch[i]
            if i == 0:
                ups.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(c_in, out_ch, 4, 2, 1), nn.Tanh()))
                continue
            layers = [nn.ReLU(True), nn.ConvTranspose2d(c_in, ch[i - 1], 4, 2, 1), _norm(ch[i - 1])]
            if dropout and 4 <= i < n - 1:
                layers.append(nn.Dropout(0.5))
            ups.append(nn.Sequential(*layers))
        self.downs, self.ups = nn.ModuleList(downs), nn.ModuleList(ups)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        feats = []
        x = mask
        for down in self.downs:
            x = down(x)
            feats.append(x)
        y = self.ups[-1](feats[-1])
        for i in range(len(self.ups) - 2, -1, -1):
            y = self.ups[i](torch.cat([feats[i], y], dim=1))
        return y


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: (mask, image) concatenated → a grid of real/fake logits (no sigmoid)."""

    def __init__(self, in_ch: int = 2, ndf: int = 16, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ndf
        for i in range(1, n_layers + 1):
            c_out = ndf * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride, 1), _norm(c_out), nn.LeakyReLU(0.2, True)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([mask, image], dim=1))


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix ``normal`` init: conv weights N(0, gain), norm scales N(1, gain), biases 0 (uses torch's RNG)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


def build(size: int = 128, ngf: int = 16, ndf: int = 16,
          dropout: bool = True) -> tuple[UNetGenerator, PatchDiscriminator]:
    """A freshly initialised (generator, discriminator) pair for 1-channel masks and 1-channel images."""
    return init_weights(UNetGenerator(size, 1, 1, ngf, dropout)), init_weights(PatchDiscriminator(2, ndf))
