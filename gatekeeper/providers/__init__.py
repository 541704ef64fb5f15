"""Provider adapters: one module per upstream wire format, plus the pool that fails over."""
