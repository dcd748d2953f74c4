"""Job types: what each one accepts, how it is keyed and routed (spec, registry, one module per type)."""
