"""One factor for every time bound of a run: ``--time-scale F`` (default 1).

Behaviours promise things in time ("the app learns of the reset within 1 s"). On a
machine that runs every packet through an emulator -- a QEMU guest under TCG is about ten
times slower per packet than KVM -- the same promise needs a proportionally longer bound,
or the run measures the emulator. The factor multiplies the suite's bounds (through
:func:`scaled`) and every test's pytest-timeout; it never shortens anything.
"""

from __future__ import annotations

_factor = 1.0


def set_time_scale(factor: float) -> None:
    """Set the run's factor (the plugin does, from ``--time-scale``); must be >= 1."""
    global _factor
    if not factor >= 1.0:
        raise ValueError(f"--time-scale {factor!r}: must be a number >= 1")
    _factor = float(factor)


def time_scale() -> float:
    return _factor


def scaled(seconds: float) -> float:
    """``seconds`` times the run's factor."""
    return seconds * _factor
