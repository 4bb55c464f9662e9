"""The loopback sshd machines of tests/fleet, for the shared-fleet tests over SSH."""

from tests.fleet.conftest import ssh_lab, ssh_machines  # noqa: F401
