import pytest

pytest_plugins = ["fleetlab_common.testing.plugin"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes more than ~30 s (still part of `make test`; -m 'not slow' skips)"
    )
