"""mlvc: version control for model weights."""

__version__ = "0.1.0"

__all__ = ["Repo", "__version__"]


def __getattr__(name):
    if name == "Repo":
        from .repo import Repo

        return Repo
    raise AttributeError(name)
