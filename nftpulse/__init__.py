"""Pulse: real-time updates and alerts for NFT trust and market data.

This package is the wiring (the CLI and the process entry points: API, worker, dispatcher). The
repository's top-level folders (``core``, ``domain``, ``store``, ``workflows``, ``activities``, ``api``,
``channels``, ``templates``, ``dashboards``) are its subpackages: in a checkout they appear here as links,
in the installed wheel as folders, so nothing but ``nftpulse`` is put into site-packages.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nftpulse")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
