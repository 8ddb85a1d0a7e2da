"""The project's own exception for errors a user can cause."""


class AttnvizError(Exception):
    """A problem the user can fix; its message is one line saying what is wrong and what to do."""
