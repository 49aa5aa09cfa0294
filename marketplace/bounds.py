"""The integer ranges the marketplace accepts from outside: what fits the columns they meet.

Every integer a client or an operator sends must fit the column it is compared with: beyond it
SQLite raises OverflowError and PostgreSQL an out-of-range error, both a crash. Bodies carry
amounts and counts (BIGINT at most); paths, queries, forms and command arguments carry ids and
page numbers, and every id column they name is an INTEGER (32 bits on PostgreSQL; ledger ids
are never taken from a request), so those are bounded tighter. A module of its own, free of
imports, so that the command line can use it without loading the web stack.
"""

from __future__ import annotations

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ID_MIN, ID_MAX = -(2**31), 2**31 - 1
