"""Repository-wide pytest configuration.

The harness itself is a plugin (``pytest11`` entry point ``harness.plugin``), loaded for
any project that installs ztun; this file only adds what *this* repository's own tests
need: ``pytester``, used by the harness's self-tests to run pytest sessions in a
subprocess. (The conformance table comes with the plugin.)
"""

pytest_plugins = ("pytester",)

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the harness extra is not installed: no property tests to configure
    pass
else:
    # CI runs on two shared cores next to namespaces full of servers: a per-example
    # deadline measures the machine's load, not the code, so it is off; the example
    # count stays the default so properties are searched as thoroughly everywhere.
    settings.register_profile("ztun", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("ztun")
