"""The versions of the libraries that decide verdicts, recorded in every evaluation's metadata (the shared
environment record, :func:`lightreasoner.utils.environment_info`, holds the rest)."""

from __future__ import annotations

# Distributions whose version can change a verdict: sympy and the two LaTeX parsers (the toolkit's rules),
# word2number (number words), math-verify (--grader math-verify).
GRADING_DISTRIBUTIONS = ("sympy", "latex2sympy2_extended", "antlr4-python3-runtime", "math-verify", "word2number")


def grading_versions() -> dict[str, str | None]:
    """``{distribution: version}`` of :data:`GRADING_DISTRIBUTIONS` (``None`` where one is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for dist in GRADING_DISTRIBUTIONS:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found
