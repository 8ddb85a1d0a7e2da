"""The project's own exception for errors a user can cause."""


# The kinds of error a front end names in the reader's language (the locale files' "err_<code>" texts, shown
# before the library's own line); any other error is "generic".
ERROR_CODES = (
    "generic",
    "no_image",
    "empty",
    "not_image",
    "corrupt",
    "too_small",
    "too_large",
    "file_too_big",
    "time_limit",
    "choice",
)


class AttnvizError(Exception):
    """A problem the user can fix; its message is one line saying what is wrong and what to do, and its
    ``code`` (one of ERROR_CODES) the kind of problem, by which a front end finds its translated headline."""

    def __init__(self, message: str, code: str = "generic") -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}; add it to ERROR_CODES and to every locale file")
        super().__init__(message)
        self.code = code
