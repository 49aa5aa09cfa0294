"""Evaluation: the evaluate endpoint and sandbox health.

DESIGN §2 lists no domain for this; it is its own package because it joins three others
(catalog for the version, licensing for the entitlement, the sandbox pool for the run) and
belongs to none of them. It owns no tables.
"""
