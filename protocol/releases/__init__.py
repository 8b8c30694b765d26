"""Signed, versioned releases of the encoder: the release format, the TUF client, and `cairn release`.

Modules, one job each: `version` (semver ordering), `layout` (file and target names), `manifest`
(the strict manifest parser and content-level checks), `signed` (how a release is bound to TUF
targets), `trust` (pinned roots and the highest installed version), `offline` (verifying a metadata
chain without a network), `install` (atomic directory swaps), `client` and `cli`.
"""
