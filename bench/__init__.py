"""`make bench` / `python -m bench [SECTION ...]`: jitmesh measured on real processes on 127.0.0.1.

Sections (each runs on its own; a failing one says why and the others still run):
issuance (`/token` on SQLite beside a bare OPA query), postgres, shadow, profile (py-spy on
the broker; runs by itself when issuance misses its aim), sidecar, webhook, revocation.

Layout: `runner` (sections, options, output), `report` (figures, table, JSON), `wrk` (the
load client), `stack` (OPA, brokers, dev issuer), `pg` (PostgreSQL via the tests' server),
one module per section, and the run() functions other work owns (`store_bench`,
`sidecar_bench`, `injector_bench`), called through `external`. Results: bench/results/.
"""
