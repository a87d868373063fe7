"""A training step of the paper's network, ``equifast.models.Figure3Net`` (forward, cross-entropy,
backward, SGD step), per backend and dtype: ``prepare_train_step`` builds the callable (also timed by
``bench/test_bench_train_step.py``), ``time_train_steps`` times it for ``python -m equifast bench``."""
from __future__ import annotations

import contextlib
import os
from typing import Dict, List, Sequence

import torch

from .cases import DTYPES, Unsupported
from .report import progress_line
from .rooflines import add_derived
from .timing import measure

TRAIN_BATCH = {"quick": 8, "cpu": 32, "full": 128}


@contextlib.contextmanager
def _forced_backend(backend: str):
    from ..backends import ENV_VAR
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old


def load_model_class():
    """``equifast.models.Figure3Net``, or raise with the reason it cannot be loaded."""
    import importlib
    models = importlib.import_module("equifast.models")
    return getattr(models, "Figure3Net")


def prepare_train_step(backend: str, device: str, dtype: str, batch: int):
    """A callable running one SGD training step of Figure3Net (forward, cross-entropy, backward, step).

    The backend is applied by passing ``backend=`` when the constructor takes it, and by setting
    ``EQUIFAST_BACKEND`` (which forces every ``backend="auto"`` op) while the step runs. For a dtype other
    than float32 the model and input are cast to it (pure low-precision training, like the op benchmarks).
    Raises :class:`Unsupported` when the model cannot be built.
    """
    import inspect
    import torch.nn.functional as F
    try:
        cls = load_model_class()
    except Exception as exc:
        raise Unsupported(f"equifast.models.Figure3Net is not available ({type(exc).__name__}: {exc})") from None
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {"backend": backend} if "backend" in params else {}
    with _forced_backend(backend):
        model = cls(**kwargs).to(device=device, dtype=DTYPES[dtype])
    shape = tuple(getattr(model, "input_shape", None) or getattr(cls, "input_shape", None) or (1, 28, 28))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch,) + shape[-3:], generator=gen).to(device=device, dtype=DTYPES[dtype])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    labels = None

    def step():
        nonlocal labels
        with _forced_backend(backend):
            opt.zero_grad(set_to_none=True)
            out = model(x)
            logits = out.reshape(batch, -1).float()
            if labels is None:
                labels = torch.randint(0, logits.shape[1], (batch,), generator=gen).to(device)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            opt.step()
        return loss
    return step, {"how_backend_applied": ("constructor backend= and " if kwargs else "") + "EQUIFAST_BACKEND",
                  "input_shape": [batch, *shape[-3:]],
                  "parameters": sum(p.numel() for p in model.parameters())}


def time_train_steps(backends: Sequence[str], device: str, dtypes: Sequence[str], scale: str,
                     timing: Dict[str, float]) -> List[Dict[str, object]]:
    batch = TRAIN_BATCH[scale]
    records = []
    for dtype in dtypes:
        for backend in backends:
            rec = {"op": "train_step", "model": "Figure3Net", "case": f"figure3net_b{batch}", "scale": scale,
                   "batch": batch, "dtype": dtype, "mode": "forward+backward+sgd", "backend": backend,
                   "status": None, "reason": None, "median_ms": None, "min_ms": None, "samples": None,
                   "speedup_vs_reference": None, "speedup_vs_torch": None}
            try:
                step, info = prepare_train_step(backend, device, dtype, batch)
                rec.update(info)
                t = measure(step, device, **timing)
                rec.update(status="ok", median_ms=t["median_s"] * 1e3, min_ms=t["min_s"] * 1e3,
                           samples=t["samples"])
            except Unsupported as exc:
                rec.update(status="skipped", reason=str(exc))
            except RuntimeError as exc:
                # the model reached an op whose backend cannot run it (e.g. a dtype it does not take)
                unsupported = "does not support this call" in str(exc) or "is not available on" in str(exc)
                rec.update(status="skipped" if unsupported else "error", reason=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                rec.update(status="error", reason=f"{type(exc).__name__}: {exc}")
            records.append(rec)
            print(progress_line(rec), flush=True)
            if rec["status"] == "skipped" and "not available" in (rec["reason"] or ""):
                # the model is missing: one record per dtype says so; no point trying every backend
                break
    add_derived(records, {})
    return records

