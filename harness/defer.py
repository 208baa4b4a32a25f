"""A defer stack: undo actions registered as resources are made, run in reverse.

After kselftest's ``defer()`` and pyroute2's fixture ``register_*``: every step that
creates something registers its undo *immediately*, so a failure halfway through a
build still tears down exactly what exists.  Running the stack never stops at the first
error -- every undo runs, then the errors are raised together -- and it is safe to run
twice (a finalizer after an explicit close).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

__all__ = ["DeferStack", "TeardownError"]


class TeardownError(Exception):
    """One or more undo actions failed; ``errors`` lists (what, exception) pairs."""

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {what}: {type(exc).__name__}: {exc}" for what, exc in errors)
        super().__init__(f"{len(errors)} teardown step(s) failed:\n{lines}")


@dataclass(frozen=True, slots=True)
class _Undo:
    what: str
    fn: Callable[[], object]


class DeferStack:
    """LIFO of undo callbacks; also a context manager (runs on exit, even on error)."""

    def __init__(self) -> None:
        self._stack: list[_Undo] = []
        self._lock = threading.Lock()

    def defer(self, fn: Callable[[], object], what: str) -> None:
        """Register ``fn`` to run at :meth:`close`; ``what`` names it in error messages."""
        with self._lock:
            self._stack.append(_Undo(what, fn))

    def __len__(self) -> int:
        return len(self._stack)

    def close(self) -> None:
        """Run every undo, newest first; raise :class:`TeardownError` if any failed.

        A KeyboardInterrupt during teardown is held until the remaining undos ran:
        an interrupted teardown is exactly how namespaces leak.
        """
        errors: list[tuple[str, BaseException]] = []
        interrupt: BaseException | None = None
        while True:
            with self._lock:
                if not self._stack:
                    break
                undo = self._stack.pop()
            try:
                undo.fn()
            except (KeyboardInterrupt, SystemExit) as exc:
                interrupt = interrupt or exc
            except Exception as exc:
                errors.append((undo.what, exc))
        if interrupt is not None:
            raise interrupt
        if errors:
            raise TeardownError(errors)

    def __enter__(self) -> DeferStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
