"""Training aids that make the decoder take the digit from the label and leave the style to z:
a label adversary and a swap critic (docs/architecture.md). Used in training only. No Kedro here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvae_mnist.core.model import CVAE
from cvae_mnist.core.runtime import World


class _ReverseGradient(torch.autograd.Function):
    """The identity forward; the gradient times ``-weight`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def _critic(num_classes: int, image_size: int) -> nn.Sequential:
    """Two stride-2 convolutions and a linear layer: about a quarter of the judge's cost.

    A convolutional critic, as the judge is: against a pixel perceptron the decoder learned
    to please the perceptron more than a CNN reader (docs/results.md), while digits that
    satisfy this critic are read alike by a CNN and by a perceptron.
    """
    size = image_size // 4
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * size * size, num_classes),
    )  # fmt: skip


class LabelAidedCVAE(nn.Module):
    """``cvae`` with the two aids; ``forward`` returns the CVAE's outputs and their losses.

    Args:
        cvae: The model being trained (its parameters are shared, not copied).
        adversary_weight: How hard the encoder is pushed to hide the label (0: no adversary).
        swap_weight: Weight of the critic's loss on swapped decodes (0: no critic).
        swap_fraction: Share of each batch decoded under another label.
        world: The processes that train together: the swapped images are the first of the
            *global* batch, and their loss is scaled so that N processes compute the
            gradient one process computes with the global batch.
    """

    def __init__(
        self,
        cvae: CVAE,
        adversary_weight: float,
        swap_weight: float,
        swap_fraction: float,
        hidden: int = 256,
        world: World = World(),
    ) -> None:
        super().__init__()
        self.cvae, self.adversary_weight, self.world = cvae, adversary_weight, world
        self.swap_weight, self.swap_fraction = swap_weight, swap_fraction
        d, k = cvae.config.latent_dim, cvae.config.num_classes
        self.adversary = (
            nn.Sequential(
                nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, k)
            )
            if adversary_weight > 0
            else None
        )
        self.critic = _critic(k, cvae.config.image_size) if swap_weight > 0 else None

    @property
    def config(self):  # the objective reads the latent size from whichever model it trains
        return self.cvae.config

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, mu, logvar, losses)``; ``losses`` holds ``adversary`` (the classifier's
        cross-entropy, its gradient reversed into the encoder), ``critic`` (the critic's on
        the real images) and ``swap`` (the critic's on swapped decodes, to be weighted)."""
        cvae, losses = self.cvae, {}
        mu, logvar = cvae.encode(x, labels)
        z = cvae.reparameterize(mu, logvar, noise)
        logits = cvae.decode(z, labels)
        if self.adversary is not None:
            guess = self.adversary(_ReverseGradient.apply(mu.float(), self.adversary_weight))
            losses["adversary"] = F.cross_entropy(guess.float(), labels)
        if self.critic is not None:
            # the first n images of the global batch; every rank draws the same shifts
            n = max(1, round(len(labels) * self.world.size * self.swap_fraction))
            shift = torch.randint(1, cvae.config.num_classes, (n,), device=labels.device)
            start = self.world.rank * len(labels)
            mine = slice(0, max(0, min(n - start, len(labels))))
            other = (labels[mine] + shift[start : start + len(labels)]) % cvae.config.num_classes
            swapped = torch.sigmoid(cvae.decode(z[mine], other))
            # the critic judges with its weights held: only the decoder learns from this term
            held = {name: p.detach() for name, p in self.critic.named_parameters()}
            verdict = torch.func.functional_call(self.critic, held, (swapped,))
            losses["critic"] = self._mean(self.critic(x[mine]), labels[mine], n)
            losses["swap"] = self._mean(verdict, other, n)
        return logits, mu, logvar, losses

    def _mean(self, logits: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
        """Cross-entropy averaged over the global batch's ``n`` swapped images; with several
        processes, times their number: DDP averages the ranks' gradients, and a rank may hold
        none of the n."""
        if self.world.size == 1:
            return F.cross_entropy(logits.float(), target)
        return F.cross_entropy(logits.float(), target, reduction="sum") / n * self.world.size
