"""`ClosingContext`: the `with` protocol for objects that own a resource released by `close()`."""

from __future__ import annotations

from typing import Self


class ClosingContext:
    """Mixin: `with obj:` returns `obj` and calls `obj.close()` on the way out, even on error.

    Subclasses define `close()`, which must be idempotent.
    """

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
