"""One backend call: its upstream request, the exchange, and the pipeline of policies around it."""
