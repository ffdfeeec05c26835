"""The ``streams`` command."""
