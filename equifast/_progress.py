"""Progress of a training loop: tqdm bars on a terminal, one plain line per epoch otherwise.

Bars redraw themselves many times a second, which floods a log file or a CI console; so they are
shown only when standard output is a terminal (and tqdm is installed, and the caller did not pass
``disable=True``, e.g. from ``--no-progress``). Otherwise the loop prints one line per epoch.

* ``bars_enabled(disable=False) -> bool``: whether ``progress`` would draw a bar.
* ``progress(iterable, desc, total=None, disable=False, unit="it")``: a tqdm bar over ``iterable``
  (written to stderr, removed when done) when bars are enabled, else ``iterable`` itself.
* ``set_postfix(bar, **values)``: show ``values`` on the bar; nothing on a plain iterable.
* ``epoch_line(name, epoch, epochs, loss, accuracy, seconds, **extra) -> str``:
  ``"<name>: epoch 3/15  loss 0.123  accuracy 0.962  0.88 s"`` (``extra`` appended as ``key value``).
* ``end_epoch(bar, name, epoch, epochs, loss, accuracy, seconds, **extra)``: after an epoch of a loop
  over ``progress(range(epochs), ...)``: the values on the epoch bar, or ``epoch_line`` printed.

Typical loop::

    bar = progress(range(epochs), desc="model", unit="epoch", disable=args.no_progress)
    for epoch in bar:
        loss, acc = train_one_epoch(...)
        end_epoch(bar, "model", epoch + 1, epochs, loss, acc, seconds)
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional


def _stdout_is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):   # a closed or detached stream
        return False


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm


def bars_enabled(disable: bool = False) -> bool:
    return not disable and _stdout_is_terminal() and _tqdm() is not None


def progress(iterable: Iterable, desc: str, total: Optional[int] = None, disable: bool = False,
             unit: str = "it") -> Iterable:
    if not bars_enabled(disable):
        return iterable
    return _tqdm()(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)


def is_bar(obj) -> bool:
    return hasattr(obj, "set_postfix")


def set_postfix(bar, **values) -> None:
    if is_bar(bar):
        bar.set_postfix(**values)


def epoch_line(name: str, epoch: int, epochs: int, loss: float, accuracy: float, seconds: float,
               **extra) -> str:
    line = f"{name}: epoch {epoch}/{epochs}  loss {loss:.3f}  accuracy {accuracy:.3f}  {seconds:.2f} s"
    return line + "".join(f"  {key} {value:.3f}" if isinstance(value, float) else f"  {key} {value}"
                          for key, value in extra.items())


def end_epoch(bar, name: str, epoch: int, epochs: int, loss: float, accuracy: float, seconds: float,
              **extra) -> None:
    if is_bar(bar):
        bar.set_postfix(loss=f"{loss:.3f}", train_acc=f"{accuracy:.3f}", s_per_epoch=f"{seconds:.2f}",
                        **{key: f"{value:.3f}" if isinstance(value, float) else value for key, value in extra.items()})
    else:
        print(epoch_line(name, epoch, epochs, loss, accuracy, seconds, **extra), flush=True)
