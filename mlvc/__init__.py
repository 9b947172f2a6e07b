"""mlvc: version control for model weights."""

from .version import __version__

__all__ = ["KeepPolicy", "Repo", "Tracker", "__version__"]


def __getattr__(name):
    if name == "Repo":
        from .repo import Repo

        return Repo
    if name in ("Tracker", "KeepPolicy"):  # torch is imported only when a model is committed
        from . import tracker

        return getattr(tracker, name)
    raise AttributeError(name)
