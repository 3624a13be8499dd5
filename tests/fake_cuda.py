"""A fake ``cuda:0`` for machines without a GPU: real values on the CPU, CUDA's device rules enforced.

``FakeTensorMode`` (``torch._subclasses.fake_tensor``) can put tensors on a fake ``cuda`` device
on a CPU build, but it has no values: every host read (``.item()``, ``bool``, ``nonzero``), which
the solver loop does at each check, fails, and autograd on a CUDA-typed tensor aborts the process
when torch has no CUDA device guard. So this stand-in keeps the data on the CPU and tags each tensor
with where it would live:

* :class:`OnDevice` tensors report ``device == cuda:0``; factories given a CUDA device, ``.to(cuda)``
  and ``.cuda()`` make them, and every result of an op that reads one is one.
* :class:`OnHost` tensors are those made on the CPU inside the context (a factory without a device,
  ``torch.from_numpy``, ``.cpu()``).
* An op that mixes an ``OnDevice`` tensor with an ``OnHost`` tensor of one or more dimensions
  raises CUDA's "Expected all tensors to be on the same device" (0-dim host tensors are legal
  operands on CUDA, as are copies between devices and host indices into a device tensor); a CPU
  generator given to a CUDA factory raises as on CUDA; ``.numpy()`` of a device tensor raises.
* Host reads of device tensors (``item``, ``bool``, ``int``, ``float``, ``tolist``, ``nonzero``,
  ``.cpu()``) are counted in ``FakeCuda.reads``: on a GPU each is a synchronisation; copies from the host to
  the device (``.to(cuda)``, ``torch.tensor(..., device=cuda)``) in ``FakeCuda.copies``.

Tensors made before the context (module-level constants) stay untagged and mix with either side.
``torch.cuda.is_available`` and the few ``torch.cuda`` functions deqloop calls are patched while
the context is open, so ``resolve_device("cuda")`` and the trainer run; ``torch.autocast("cuda")``
is not emulated (dtype mixes are checked with CPU bf16 autocast instead).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)


class _Tagged(torch.Tensor):
    def __reduce_ex__(self, protocol):  # saved as a plain tensor, as a checkpoint loaded on the CPU reads it
        with torch._C.DisableTorchFunctionSubclass():
            return torch.Tensor.__reduce_ex__(self.as_subclass(torch.Tensor), protocol)


class OnDevice(_Tagged):
    """A CPU tensor standing for one on ``cuda:0``."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return CUDA

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


class OnHost(_Tagged):
    """A tensor made on the CPU inside the fake-CUDA context."""


class Generator(torch.Generator):
    """``torch.Generator(device="cuda")`` inside the context: a CPU generator reporting ``cuda:0``."""

    def __new__(cls, device: Any = "cpu"):
        fake = torch.device(device).type == "cuda"
        g = super().__new__(cls, "cpu" if fake else device)
        g.fake = fake
        return g

    def __init__(self, device: Any = "cpu") -> None:
        pass

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return CUDA if self.fake else torch.device("cpu")


# moving or aliasing data between devices, and indexing a device tensor with host indices, are legal
MIXING_ALLOWED = {"copy_", "to", "cpu", "cuda", "_has_compatible_shallow_copy_type", "__get__", "__set__",
                  "__getitem__", "__setitem__", "swap_tensors", "_make_subclass", "set_", "_parse_to",
                  "__repr__", "__format__", "__str__", "module_load"}
MOVES = {"to", "cpu", "cuda"}
HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy"}


def _device(spec: Any) -> torch.device | None:
    if isinstance(spec, torch.device):
        return spec
    if isinstance(spec, (str, int)) and not isinstance(spec, bool):
        try:
            return torch.device(spec)
        except (RuntimeError, TypeError):
            return None
    return None


class FakeCuda(TorchFunctionMode):
    """The context; see the module docstring. ``reads`` counts host reads of device tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.copies = 0
        self._patched: list[tuple[Any, str, Any]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        on_device = any(isinstance(t, OnDevice) for t in tensors)
        on_host = any(isinstance(t, OnHost) for t in tensors)
        if on_device and name not in MIXING_ALLOWED and any(isinstance(t, OnHost) and t.dim() > 0 for t in tensors):
            raise RuntimeError(f"{name}: Expected all tensors to be on the same device, but found at least two "
                               "devices, cuda:0 and cpu! (fake CUDA)")
        if on_device and name in HOST_READS:
            if name == "numpy":
                raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                                "tensor to host memory first. (fake CUDA)")
            self.reads += 1
        target: type | None = None
        if name in MOVES:
            dst = CUDA if name == "cuda" else torch.device("cpu") if name == "cpu" else None
            if name == "to":
                for a in [*args[1:], kwargs.get("device")]:
                    dst = a.device if isinstance(a, torch.Tensor) else _device(a)
                    if dst is not None:
                        break
            if dst is not None:
                target = OnDevice if dst.type == "cuda" else OnHost
                if target is OnDevice and not isinstance(args[0], OnDevice):  # the source is the tensor moved
                    self.copies += 1
                elif target is OnHost and isinstance(args[0], OnDevice):  # a copy to the host waits for the device
                    self.reads += 1
                if name == "to":
                    args = tuple("cpu" if _device(a) is not None and _device(a).type == "cuda" else a for a in args)
                    if "device" in kwargs:
                        kwargs["device"] = "cpu"
                elif name == "cuda":
                    func, args = torch.Tensor.to, (args[0], "cpu")
                    kwargs = {k: v for k, v in kwargs.items() if k == "non_blocking"}
        elif "device" in kwargs and kwargs["device"] is not None:
            dst = _device(kwargs["device"])
            if dst is not None and dst.type == "cuda":
                generator = kwargs.get("generator")
                if generator is not None and generator.device.type != "cuda":
                    raise RuntimeError(f"Expected a 'cuda' device type for generator but found "
                                       f"'{generator.device.type}' (fake CUDA)")
                kwargs["device"] = "cpu"
                target = OnDevice
                if name in ("tensor", "as_tensor"):  # host data copied to the device
                    self.copies += 1
            else:
                target = OnHost
        if target is None:
            target = OnDevice if on_device else OnHost if on_host or not tensors else None
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if target is None:
            return out
        same = {id(t) for t in tensors} if name not in MOVES else set()

        def tag(t: Any) -> Any:
            if not isinstance(t, torch.Tensor) or id(t) in same or type(t) is target:
                return t
            if type(t) in (torch.Tensor, OnHost, OnDevice) or (name in MOVES and isinstance(t, torch.nn.Parameter)):
                return t.as_subclass(target)
            return t

        return tree_map(tag, out)

    def _patch(self, owner: Any, attr: str, value: Any) -> None:
        self._patched.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def __enter__(self) -> "FakeCuda":
        self._swap = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)  # module.to(cuda) keeps tagged Parameters
        c = torch.cuda
        self._patch(c, "is_available", lambda: True)
        self._patch(c, "device_count", lambda: 1)
        self._patch(c, "set_device", lambda device: None)
        self._patch(c, "current_device", lambda: 0)
        self._patch(c, "synchronize", lambda device=None: None)
        self._patch(c, "get_device_capability", lambda device=None: (9, 0))
        self._patch(c, "is_bf16_supported", lambda including_emulation=True: True)
        self._patch(c, "get_rng_state_all", lambda: [torch.zeros(16, dtype=torch.uint8)])
        self._patch(c, "set_rng_state_all", lambda states: None)
        self._patch(c, "manual_seed_all", lambda seed: None)
        self._patch(c, "get_device_name", lambda device=None: "fake cuda:0")
        self._patch(torch, "Generator", Generator)
        self._patch(c, "set_sync_debug_mode", lambda mode: None)
        self._patch(c, "reset_peak_memory_stats", lambda device=None: None)
        self._patch(c, "max_memory_allocated", lambda device=None: 0)
        # page-locked host memory needs the CUDA driver; patched on the class, since the mode is per
        # thread and batches are pinned in background threads
        self._patch(torch.Tensor, "pin_memory", lambda t, device=None: t.clone())
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for owner, attr, value in reversed(self._patched):
            setattr(owner, attr, value)
        self._patched.clear()
        torch.__future__.set_swap_module_params_on_conversion(self._swap)


def fake_cuda() -> FakeCuda:
    """``with fake_cuda() as gpu: ...``: run code as if ``cuda:0`` existed (see the module docstring)."""
    return FakeCuda()
