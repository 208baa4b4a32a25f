"""The tun2socks conformance suite, shipped with the harness.

One test per behaviour; run it with ``ztun-harness certify`` (or
``pytest --pyargs harness.suite``) from anywhere, no checkout needed. See
:mod:`harness.suite.path` for the topologies and :mod:`harness.conformance` for the report.
"""
