"""`describe_failure`: one line naming what failed, with the errno's name exactly once."""

from __future__ import annotations

import errno

from kvstore.errors import WalFailedError
from kvstore.node import describe_failure


def _chained(message: str, code: int) -> BaseException:
    error = WalFailedError(message)
    error.__cause__ = OSError(code, "boom")
    return error


def test_a_bare_reason_gains_the_errno_name() -> None:
    text = describe_failure(_chained("fdatasync failed: No space left on device", errno.ENOSPC))
    assert text == "fdatasync failed: No space left on device (ENOSPC)"


def test_a_message_that_names_the_errno_is_left_alone() -> None:
    """The redo log's own messages say "ENOSPC 28 (No space left on device)": adding the name
    again printed "(No space left on device (ENOSPC))" in serve's last line."""
    message = "preparing a segment failed: ENOSPC 28 (No space left on device)"
    text = describe_failure(_chained(message, errno.ENOSPC))
    assert text == message
    assert text.count("ENOSPC") == 1


def test_a_message_without_the_reason_gets_it_appended() -> None:
    assert describe_failure(_chained("log append", errno.EMFILE)) == (
        "log append: Too many open files (EMFILE)"
    )
