"""The one input-error type of pdenas.

Bad input (an unknown key, a bad value, a missing or damaged file, data that is not there with
downloads off, a storage or file-system fault the user must fix) raises ``InputError``: a
``ValueError`` of one line, ``key: problem; allowed: ...`` where a key is to blame. The command
line maps it (and only it, with ``FileNotFoundError``) to exit status 2 and that one line;
anything else raised inside pdenas is a bug and shows its traceback (exit 1).
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input, in one line.

    Args:
        message: The line, ``key: problem; allowed: ...`` where a key is to blame.
        key: The dotted key (or flag, or file) the message names, if any; when not given and the
            message has the ``key: ...`` form, the part before the first ``: ``.
        detail: What is wrong with ``key`` (default: the message after ``key: ``), for callers
            that name the key their own way (the command line names the flag the user typed).
    """

    def __init__(self, message: str, *, key: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.key = key if key is not None else _leading_key(message)
        prefix = f"{self.key}: "
        self.detail = detail if detail is not None else (
            message[len(prefix):] if self.key and message.startswith(prefix) else message)


def _leading_key(message: str) -> str | None:
    head, sep, _ = message.partition(": ")
    return head if sep and head and " " not in head.strip() else None
