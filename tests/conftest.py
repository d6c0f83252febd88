pytest_plugins = ["fleetlab_common.testing.plugin"]
