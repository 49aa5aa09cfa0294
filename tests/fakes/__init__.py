"""Network peers the tests cannot install: a stateful Stripe-compatible server."""
