"""mlvc: version control for model weights."""

from .version import __version__

__all__ = ["Repo", "__version__"]


def __getattr__(name):
    if name == "Repo":
        from .repo import Repo

        return Repo
    raise AttributeError(name)
