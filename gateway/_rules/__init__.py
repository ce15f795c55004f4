"""The pure core: header, URL, template, transform, merge, cache and resilience rules."""
