"""The xdist group of tests/conftest.py: every name in SERIAL is a test folder or file that exists (a renamed folder
would otherwise leave its daemon tests to run beside others under `scripts/test.sh`), and this file, outside it, is
collected without the group."""

from tests.conftest import REPO, SERIAL


def test_every_serial_name_exists():
    missing = sorted(name for name in SERIAL if not (REPO / "tests" / name).exists())
    assert missing == [], f"tests/conftest.py SERIAL names what tests/ no longer has: {missing}"


def test_a_test_outside_the_serial_folders_carries_no_group(request):
    assert request.node.get_closest_marker("xdist_group") is None
