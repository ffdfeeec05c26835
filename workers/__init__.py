"""The sending side: dramatiq actors (one per queue), the send pipeline, provider adapters,
the outbox relay and the worker pool runner.

The ingress imports only ``workers.queueing`` (the actors' public send functions).
"""
