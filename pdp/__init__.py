"""The broker (PDP + token service): a workload trades its ServiceAccount token for a
short-lived access token, after OPA says yes.

One `/token` request, module by module:
`app` (HTTP: parse, call, render) -> `exchange` (RFC 8693 request, the steps below, the
answer) -> `attestation` (who is asking) -> `revocation` (refused subjects, pods,
audiences) -> `decision` (the policy input; strict reading of OPA's answer; the grant)
with `opa` (the Data API call) -> `audit` (the record, written before any token leaves)
-> `tokens` (ES256 keys kept in `store`, RFC 9068 JWTs). Around it: `config` (flags),
`admin` (admin bearer tokens), `metrics`, `process` (a broker child process), `cli`.
"""
