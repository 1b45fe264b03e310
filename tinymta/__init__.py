"""tinymta: an embedded mail transfer agent for single-board computers.

The package root holds only the version; each module's docstring says what it
holds.  Nothing here may import CPython-only modules: boards import the package.
"""
__version__ = "0.1.0"
