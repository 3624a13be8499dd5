"""deqloop against torchdeq on the same MDEQ, in one run: seconds per training epoch and test
accuracy, side by side (``examples/mdeq_digits.py``: scikit-learn's digits, weight norm, Broyden
22 iterations, phantom gradient 5 steps τ 0.5, fixed-point correction over 2 states).

    python benchmarks/mdeq.py                     # 6 epochs, seeds 0 and 1, one thread (about 20 min)
    python benchmarks/mdeq.py --epochs 2 --seeds 0

torchdeq's version of the model (:class:`TorchdeqMDEQ`) is written here with torchdeq's own API
(``apply_norm``/``reset_norm``, ``get_deq``, ``fp_correction``) around the same layer, stem and
head, from the same initial weights. Timings share the machine with whatever else runs on it:
compare the two columns of one run. Needs the ``examples`` extra (scikit-learn, torchdeq).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from mdeq_digits import MDEQ, Head, MDEQLayer, digits, loss_of, stem, train  # noqa: E402


# --8<-- [start:torchdeq]
class TorchdeqMDEQ(nn.Module):
    """The same model with torchdeq: the recipe of deq-zoo's ``run_small.sh``."""

    def __init__(self, c: int = 16):
        from torchdeq import get_deq
        from torchdeq.norm import apply_norm

        super().__init__()
        self.stem, self.layer, self.head = stem(c), MDEQLayer(c), Head(c)
        apply_norm(self.layer, "weight_norm")
        self.deq = get_deq(f_solver="broyden", f_max_iter=22, f_tol=1e-3, f_stop_mode="rel", grad=5, tau=0.5,
                           n_states=2)

    def forward(self, x):
        from torchdeq.norm import reset_norm

        u = self.stem(x)
        injection = [u, u.new_zeros(len(u), u.shape[1], 4, 4)]
        reset_norm(self.layer)
        z_out, info = self.deq(lambda *z: list(self.layer(z, injection)), [torch.zeros_like(t) for t in injection])
        return [self.head(z) for z in z_out], info


def torchdeq_loss(logits, y):
    from torchdeq.loss import fp_correction

    return fp_correction(F.cross_entropy, (logits, y))
# --8<-- [end:torchdeq]


def lines(*objs) -> int:
    """Non-blank source lines of classes and functions, docstrings excluded."""
    total = 0
    for obj in objs:
        src = inspect.getsource(obj).splitlines()
        doc = len(inspect.getdoc(obj).splitlines()) if obj.__doc__ else 0
        total += sum(1 for line in src if line.strip()) - doc
    return total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds [default: 0,1]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--verbose", action="store_true", help="print every epoch")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = print if args.verbose else (lambda *a: None)
    print(f"DEQ code, model and loss (non-blank lines without docstrings): deqloop {lines(MDEQ, loss_of)}, "
          f"torchdeq {lines(TorchdeqMDEQ, torchdeq_loss)}")
    print(f"{'seed':>4}  {'library':<9} {'s / epoch':>9}  {'test accuracy':>13}")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        data = digits(seed)
        for name, build, loss_fn in (("deqloop", MDEQ, None), ("torchdeq", TorchdeqMDEQ, torchdeq_loss)):
            torch.manual_seed(seed)
            model = build()
            kw = {"loss_fn": loss_fn} if loss_fn else {}
            r = train(model, data, epochs=args.epochs, seed=seed, log=log, **kw)
            rows.append((name, r))
            print(f"{seed:>4}  {name:<9} {r['seconds_per_epoch']:>9.2f}  {100 * r['accuracy']:>12.1f} %", flush=True)
    for name in ("deqloop", "torchdeq"):
        mine = [r for n, r in rows if n == name]
        print(f"mean  {name:<9} {sum(r['seconds_per_epoch'] for r in mine) / len(mine):>9.2f}  "
              f"{100 * sum(r['accuracy'] for r in mine) / len(mine):>12.1f} %")


if __name__ == "__main__":
    main()
