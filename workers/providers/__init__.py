"""Provider adapters behind one small protocol (``workers.providers.base.Provider``)."""
