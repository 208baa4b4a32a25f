"""Repository-wide pytest configuration.

The harness itself is a plugin (``pytest11`` entry point ``harness.plugin``), loaded for
any project that installs ztun; this file only adds what *this* repository's own tests
need: ``pytester``, used by the harness's self-tests to run pytest sessions in a
subprocess.
"""

pytest_plugins = ("pytester",)
