"""A multiscale deep equilibrium model (MDEQ) on scikit-learn's bundled 8×8 digits, with deqloop.

The state is two branches, an 8×8 and a 4×4 feature map, passed to the solver as a tuple. One
layer f runs a residual block on each branch and fuses them (up- and downsampling); the input is
injected into the fine branch only. The recipe is deq-zoo's small MDEQ (``run_small.sh``):
weight norm on f, Broyden with 22 iterations, a 5-step phantom gradient with τ = 0.5; plus
fixed-point correction over 2 states (γ = 0.8):

    python examples/mdeq_digits.py     # 6 epochs; 16–58 s each measured on one CPU core shared with other jobs

``benchmarks/mdeq.py`` trains this model and torchdeq's version of it side by side. Needs the
``examples`` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from deqloop import Phantom, norm
from deqloop.solvers import BatchedMap
from deqloop.tools import correction_weights, fixed_point_states

def gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(4, channels)


class Block(nn.Module):
    """The residual block of one branch: conv → norm → relu → conv (+ injection) → norm, + z."""

    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        self.conv1, self.gn1 = nn.Conv2d(c, expand * c, 3, padding=1, bias=False), gn(expand * c)
        self.conv2, self.gn2, self.gn3 = nn.Conv2d(expand * c, c, 3, padding=1, bias=False), gn(c), gn(c)

    def forward(self, z, injection):
        out = self.gn2(self.conv2(F.relu(self.gn1(self.conv1(z)))) + injection)
        return self.gn3(F.relu(out + z))


class MDEQLayer(nn.Module):
    """f((z_fine, z_coarse), (x_fine, x_coarse)): a block per branch, then each branch takes the
    sum of both (the other one down- or upsampled)."""

    def __init__(self, c: int):
        super().__init__()
        self.blocks = nn.ModuleList([Block(c), Block(c)])
        self.down = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), gn(c))
        self.up = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), gn(c), nn.Upsample(scale_factor=2))
        self.post = nn.ModuleList([nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1, bias=False), gn(c)) for _ in range(2)])

    def forward(self, z, injection):
        fine, coarse = (block(zi, xi) for block, zi, xi in zip(self.blocks, z, injection))
        return self.post[0](fine + self.up(coarse)), self.post[1](coarse + self.down(fine))


class Head(nn.Module):
    """Both branches to 10 logits: the fine one downsampled onto the coarse one, pooled, linear."""

    def __init__(self, c: int, classes: int = 10):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.fc = nn.Linear(c, classes)

    def forward(self, z):
        return self.fc((self.down(z[0]) + z[1]).mean(dim=(2, 3)))


def stem(c: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())


# --8<-- [start:model]
class MDEQ(nn.Module):
    """The model: stem → equilibrium of :class:`MDEQLayer` → :class:`Head` (logits per graded state)."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem, self.layer, self.head = stem(c), norm.weight_norm(MDEQLayer(c)), Head(c)

    def forward(self, x):
        u = self.stem(x)
        injection = (u, u.new_zeros(len(u), u.shape[1], 4, 4))
        z0 = tuple(map(torch.zeros_like, injection))
        f = BatchedMap(self.layer, injection)  # converged samples stop being evaluated
        with norm.once(self.layer):  # the normalised weights, computed once, outside the no-grad solve
            states, sol = fixed_point_states(f, z0, "broyden", Phantom(steps=5, tau=0.5), max_iter=22, rtol=1e-3,
                                             states=2 if self.training else 1)
        return [self.head(z) for z in states], sol


def loss_of(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Fixed-point correction: cross-entropy of every graded state, the last weighted most."""
    return sum(w * F.cross_entropy(out, y) for w, out in zip(correction_weights(len(logits)), logits))
# --8<-- [end:model]


def digits(seed: int = 0):
    """scikit-learn's 1,797 digits as ``(N, 1, 8, 8)`` in [0, 1]; 1,437 for training, 360 for testing."""
    from deqloop.extras import require

    data = require("sklearn.datasets", "the digits example").load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


def train(model: nn.Module, data, *, epochs: int = 6, batch: int = 64, lr: float = 2e-3, seed: int = 0,
          loss_fn=loss_of, log=print) -> dict:
    """Adam with cosine decay; returns seconds per epoch (training only) and test accuracy."""
    (x, y), (xt, yt) = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // batch):
            idx = order[i * batch : (i + 1) * batch]
            loss = loss_fn(model(x[idx])[0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        times.append(time.perf_counter() - start)
        acc = accuracy(model, xt, yt)
        log(f"epoch {epoch + 1}: {times[-1]:.2f} s, loss {float(loss.detach()):.3f}, test accuracy {100 * acc:.1f} %")
    return {"seconds_per_epoch": sum(times) / len(times), "accuracy": acc}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x)[0][-1].argmax(-1) == y).float().mean())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return train(MDEQ(), digits(args.seed), epochs=args.epochs, seed=args.seed)


if __name__ == "__main__":
    main()
