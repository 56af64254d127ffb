"""loadmgrd: the Load Manager daemon.

Kept import-free on purpose: the control client and tools import the version from here.
"""

__version__ = "2.0.0.dev0"
