"""``--compile``: ``torch.compile`` for fixed networks in retraining and prediction, with an eager fallback.

``torch.compile`` compiles lazily, at the first forward (and, for training, the first backward) of each new
input shape. Where it cannot work (no C++ compiler for the CPU backend, no Triton for CUDA, an unsupported
Python, an operation Dynamo cannot trace), that first call raises deep inside torch. :func:`compile_forward`
therefore tries the compiled module once on a probe input of the run's own shape (forward, and backward when
training) before the run starts; when that fails the run says why in one line and goes on eagerly, so a user
never loses a run to a compiler. The probe's compilation is the one the run would have made anyway (same
shapes), so it costs no extra time beyond its single step.

The compiled callable is only used for the forward passes: checkpoints, ``state_dict`` and the optimiser keep
working on the original module (``torch.compile``'s wrapper would prefix every key with ``_orig_mod.``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from scnas_dsl.errors import RunError, first_line

#: the exceptions of a compiler that failed (not of the network): anything else is a real error and is raised
_COMPILER_ERRORS: tuple[type[BaseException], ...] = ()


def _compiler_errors() -> tuple[type[BaseException], ...]:
    global _COMPILER_ERRORS
    if not _COMPILER_ERRORS:
        found: list[type[BaseException]] = []
        try:
            from torch._dynamo.exc import TorchDynamoException

            found.append(TorchDynamoException)
        except ImportError:  # pragma: no cover - torch without dynamo
            pass
        try:
            from torch._inductor.exc import InductorError

            found.append(InductorError)
        except ImportError:  # pragma: no cover - older torch
            pass
        # torch.compile itself refuses some platforms (an unsupported Python) with a RuntimeError, and a
        # missing compiler surfaces as OSError / FileNotFoundError / CalledProcessError from the build step
        import subprocess

        found += [RuntimeError, OSError, subprocess.CalledProcessError, ImportError, NotImplementedError]
        _COMPILER_ERRORS = tuple(found)
    return _COMPILER_ERRORS


def compile_backend() -> str:
    """The ``torch.compile`` backend: ``inductor`` (generated kernels: the speed-up), or what the environment
    variable ``SCNAS_COMPILE_BACKEND`` names (``aot_eager`` traces and runs the same graphs without generating
    code: for debugging a model that does not compile, and for the CPU tests, where inductor's C++ build of a
    whole U-Net takes minutes)."""
    backend = os.environ.get("SCNAS_COMPILE_BACKEND", "").strip() or "inductor"
    from torch._dynamo import list_backends

    if backend not in {*list_backends(exclude_tags=()), "inductor"}:
        raise RunError(f"SCNAS_COMPILE_BACKEND={backend!r} is not a torch.compile backend: unset it for inductor "
                       "(the default), or use aot_eager or eager (tracing only), or another name of "
                       "torch._dynamo.list_backends()")
    return backend


def compile_forward(module: nn.Module, probe: torch.Tensor, *, train: bool, what: str,
                    log: Callable[[str], None] | None = None, backend: str | None = None) -> nn.Module:
    """``torch.compile(module)`` checked on ``probe`` (a batch of the run's shape on the run's device), or
    ``module`` itself when compiling fails (said through ``log``, default stderr). ``train``: the probe also
    runs a backward pass (the gradients it leaves are cleared). ``what`` names the job in the message;
    ``backend`` defaults to :func:`compile_backend`."""
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    backend = backend or compile_backend()
    was_training = module.training
    say(f"--compile: compiling the network for {what} (torch.compile, backend {backend}; minutes on a CPU)...")
    start = time.perf_counter()
    try:
        compiled = torch.compile(module, backend=backend)
        module.train(train)
        if train:
            out = compiled(probe)
            # every output, the deep-supervision heads' too: the backward then reaches every parameter the
            # steps train (under DDP a head left without gradient leaves its reduction unfinished, and the first
            # step raises "Expected to have finished reduction in the prior iteration")
            outputs = list(out) if isinstance(out, (list, tuple)) else [out]
            torch.stack([o.float().sum() for o in outputs]).sum().backward()
        else:
            with torch.no_grad():
                compiled(probe)
    except torch.OutOfMemoryError:
        raise  # the network does not fit: compiling is not the problem, and eager would not fit either
    except _compiler_errors() as err:
        reason = first_line(err)
        say(f"--compile: torch.compile does not work here for {what} ({type(err).__name__}: {reason}); "
            "running eagerly instead (as without --compile). On the CPU it needs a C++ compiler (gcc or clang), "
            "on a GPU Triton; see docs/training.md.")
        return module
    finally:
        module.train(was_training)
        for p in module.parameters():
            p.grad = None
    assert isinstance(compiled, nn.Module)  # torch.compile of a module is a module (OptimizedModule)
    say(f"--compile: compiled for {what} in {time.perf_counter() - start:.0f} s")
    return compiled
