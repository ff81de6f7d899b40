"""navsvc: intraoperative navigation and registration for core decompression of the femoral head.

Inside the code every point is in LPS millimetres; see :mod:`navsvc.frames`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("navsvc")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
