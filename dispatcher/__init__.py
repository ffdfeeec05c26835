"""The ingress: send API, management API, provider webhooks and operations endpoints."""
