"""A module's cache of tensors derived from its parameters (expanded filter banks, dense weights).

``ParameterCache`` is an ``nn.Module`` mixin: ``cached(build)`` returns ``build()``'s value, rebuilt
only when a parameter changed since it was built. A parameter counts as changed when its version
counter (bumped by every in-place update: optimizer steps, ``copy_``, ``load_state_dict``), storage,
dtype or device differs; ``train()``, ``.to()`` / ``.cuda()`` / ``.half()`` and ``load_state_dict``
drop the cache outright. Writes through ``.data`` bypass the version counter: call ``clear_cache()``
after them. Copies (``copy.deepcopy``) and pickles (``torch.save(module)``) leave the cache out: it may
hold tensors that cannot be copied (oneDNN's blocked weights) and is rebuilt on first use.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

T = TypeVar("T")


class ParameterCache(nn.Module):
    _cache = None

    def _parameter_key(self) -> tuple:
        return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in self.parameters(recurse=False))

    def cached(self, build: Callable[[], T]) -> T:
        """``build()`` (run without autograd), from the cache while no parameter changed."""
        key = self._parameter_key()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        with torch.inference_mode(False), torch.no_grad():
            value = build()
        self._cache = (key, value)
        return value

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_cache", None)
        return state

    def clear_cache(self) -> None:
        """Drop the cached tensors (rebuilt on next use)."""
        self._cache = None

    def train(self, mode: bool = True):
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        return super()._load_from_state_dict(*args, **kwargs)
