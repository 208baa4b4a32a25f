"""Type aliases shared by the wire modules."""

from __future__ import annotations

from typing import TypeAlias

#: Anything a view can wrap without copying.  Read-only inputs (``bytes``) give
#: read-only views: getters work, setters raise ``TypeError`` from ``memoryview``.
BytesLike: TypeAlias = bytes | bytearray | memoryview

#: A buffer an ``emit`` may write into.
WritableBuffer: TypeAlias = bytearray | memoryview
