"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class NviError(Exception):
    """A failure a user can act on; its message is shown as-is, without a traceback."""
