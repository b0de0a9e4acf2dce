"""Text that every layer shows: names and labels cut to fit a table column, a plot or a terminal."""


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
