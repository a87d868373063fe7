"""The default frame of new ``LiftConv2d`` / ``GroupConv2d`` layers: ``default_frame``."""
from __future__ import annotations

__all__ = ["default_frame", "get_default_frame"]

FRAMES = ("view", "canonical")
_default = "view"


def get_default_frame() -> str:
    """The frame that ``LiftConv2d`` / ``GroupConv2d`` take when ``frame`` is not given ("view" unless
    changed by ``default_frame``)."""
    return _default


class default_frame:
    """Set the frame that new conv layers take when ``frame`` is not given.

    Called, it sets the default for the rest of the program::

        equifast.nn.default_frame("canonical")      # every layer built from now on: canonical

    Used with ``with``, it restores the previous default on exit::

        with equifast.nn.default_frame("canonical"):
            net = build_escnn_like_network()         # canonical-frame layers
        # back to the previous default here

    A layer's frame is fixed when it is built (``layer.frame``); changing the default later does not
    change existing layers. An explicit ``frame=`` argument always wins.
    """

    def __init__(self, frame: str):
        global _default
        if frame not in FRAMES:
            raise ValueError(f"default_frame: frame must be one of {FRAMES}, got {frame!r}")
        self.previous = _default
        self.frame = frame
        _default = frame

    def __enter__(self) -> str:
        return self.frame

    def __exit__(self, *exc) -> None:
        global _default
        _default = self.previous

    def __repr__(self) -> str:
        return f"default_frame({self.frame!r})"
