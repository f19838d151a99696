"""sandboxd: runs untrusted programs in sandboxes built from Linux kernel primitives."""

__version__ = "0.1.0"
