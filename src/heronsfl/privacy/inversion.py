"""Reconstructing a client's inputs from the activations it uploads.

Two attackers, both the honest-but-curious main server:

- Decoder (white-box; He, Zhang, Lee, "Model inversion attacks against collaborative
  inference", ACSAC 2019, the learning-based inverse network): the server holds the global
  client sub-model (in SFL the Fed-Server averages it and broadcasts it to every client), runs
  its own images through it and trains a decoder from activations back to images, then applies
  the decoder to what the clients upload.
- UnSplit (architecture only; Erdogan, Küpçü, Çiçek, "UnSplit: Data-oblivious model inversion,
  model stealing, and label inference attacks against split learning", WPES 2022): the server
  knows the client's architecture but not its weights. It optimises a guess of the inputs and a
  copy of the client weights, alternately, so that the copy maps the guess onto the uploaded
  activations, with a total-variation prior on the images.

Images are handled in pixel space [0, 1], (B, C, H, W); `to_input` maps them to the model's
normalized inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ToInput = Callable[[Tensor], Tensor]  # pixels in [0, 1] -> the client model's input


def build_decoder(
    cut_shape: tuple[int, ...], input_shape: tuple[int, ...], width: int = 32
) -> nn.Module:
    """Convolutions from (C, H, W) activations to (c, H0, W0) pixels: `width` channels at the
    cut's resolution, then one stride-2 transposed convolution per halving the client performed,
    each halving the channels (at least 16) as the resolution doubles, as a mirrored encoder.

    Raises:
        ValueError: the cut is not a (C, H, W) feature map whose size divides the input's by a
            power of two.
    """
    if len(cut_shape) != 3 or len(input_shape) != 3:
        raise ValueError(
            f"a decoder needs (C, H, W) activations and images, got cut {cut_shape} and "
            f"input {input_shape}"
        )
    (c_cut, h, w), (c_in, h0, w0) = cut_shape, input_shape
    ups = 0
    while h * 2**ups < h0:
        ups += 1
    if h * 2**ups != h0 or w * 2**ups != w0:
        raise ValueError(f"cut {cut_shape} is not input {input_shape} downsampled by 2^k")

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers: list[nn.Module] = block(c_cut, width)
    c = width
    for _ in range(ups):  # (c, h, w) -> (c', 2h, 2w)
        c_next = max(16, c // 2)
        layers += [
            nn.ConvTranspose2d(c, c_next, 4, 2, 1),
            nn.BatchNorm2d(c_next),
            nn.ReLU(inplace=True),
        ]
        c = c_next
    layers += [*block(c, c), nn.Conv2d(c, c_in, 3, 1, 1), nn.Sigmoid()]  # pixels in [0, 1]
    return nn.Sequential(*layers)


def train_decoder(
    decoder: nn.Module,
    activations: Tensor,
    images: Tensor,
    steps: int,
    gen: torch.Generator,
    noise: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
) -> list[float]:
    """Fit decoder(activations) ≈ images (MSE in pixel space) on the attacker's own pairs.

    `noise`, when the run adds noise to its uploads, is applied afresh to every batch: the
    attacker knows the defense's settings (they are in the broadcast config) and trains for it.
    Returns the loss of every step.
    """
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    decoder.train()
    losses = []
    n = len(images)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        z = activations[idx]
        if noise is not None:
            z = noise(z)
        loss = F.mse_loss(decoder(z), images[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())  # host sync: once per step
    return losses


@torch.no_grad()
def decode(decoder: nn.Module, activations: Tensor, batch_size: int = 256) -> Tensor:
    """Pixels (N, c, H0, W0) from activations (N, C, H, W), in evaluation mode."""
    decoder.eval()
    return torch.cat([decoder(a) for a in activations.split(batch_size)])


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring pixels of (B, C, H, W) images."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def unsplit(
    client_copy: nn.Module,
    target: Tensor,
    image_shape: tuple[int, ...],
    to_input: ToInput,
    steps: int,
    gen: torch.Generator,
    tv_weight: float = 0.05,
    block: int = 10,
    image_lr: float = 0.05,
    model_lr: float = 1e-3,
) -> Tensor:
    """UnSplit: alternate `block` steps on the image guess and `block` on the weight copy.

    client_copy: the client architecture with the attacker's own random weights (trained in
    place). target: the uploaded activations (B, *cut_shape). Returns pixels (B, *image_shape).
    The copy runs in training mode, as the client's forward did (batch statistics).
    """
    b = target.shape[0]
    # Unconstrained parameters; the image is their sigmoid, so it stays in [0, 1].
    logits = (0.1 * torch.randn((b, *image_shape), generator=gen)).requires_grad_(True)
    opt_x = torch.optim.Adam([logits], lr=image_lr)
    params = list(client_copy.parameters())
    for p in params:
        p.requires_grad_(True)
    opt_m = torch.optim.Adam(params, lr=model_lr)
    client_copy.train()
    for step in range(steps):
        images_turn = (step // block) % 2 == 0
        x = torch.sigmoid(logits)
        loss = F.mse_loss(client_copy(to_input(x)), target) + tv_weight * total_variation(x)
        opt = opt_x if images_turn else opt_m
        opt_x.zero_grad(set_to_none=True)
        opt_m.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.sigmoid(logits).detach()
