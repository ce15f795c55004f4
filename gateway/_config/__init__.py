"""The config pipeline: schema, loading, compilation into plans, units, docs."""
