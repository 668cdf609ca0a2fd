"""The two kinds of failure every front end reports: the user's input, or the world (files, disk,
models). The CLI maps them to exit codes 2 and 1; the UI shows their message."""


class InputError(ValueError):
    """Bad input from the user (empty prompt, absurd duration, unknown model...)."""


class RunError(RuntimeError):
    """Something outside the user's typing failed (unreadable clip, disk full, missing weights...)."""
