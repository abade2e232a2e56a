"""The error raised for a user's choice that cannot work (an option, a file), printed as one line."""


class UserError(Exception):
    """An error caused by the user's input (a path, a file, an option); printed as one line."""
