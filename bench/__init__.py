"""Benchmarks for Streams: throwaway services, server processes, load generation, profiles.

The entry point is ``bench/ingress.py`` (see ``bench/README.md``).
"""
