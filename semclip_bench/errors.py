"""User-facing errors: one clear line, a non-zero exit, no traceback."""


class UserError(Exception):
    """A problem with user input (a path, an option, a file) that the CLI reports in one line.

    The message must name the culprit (the file or the option) and say what is wrong with it.
    """

    exit_code: int = 2
