"""The pure core: header, URL, template, transform, merge, cache, resilience and admin
access rules."""
