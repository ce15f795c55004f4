"""Shared state: stores (memory, Redis), rate limiter, coalescing, caches."""
