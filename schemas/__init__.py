"""The data contract: request and response bodies, events, enums and tables. No I/O here."""
