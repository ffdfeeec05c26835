"""What the ingress and the workers share: settings, database, broker, logging, metrics,
credentials, and the pure rules about streams and messages."""
