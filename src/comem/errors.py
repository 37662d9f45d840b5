"""The one exception family the CLI turns into a single line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (file, flag, dataset); the message alone says what is wrong and where."""
