"""The README's apt-get line and .ci/run install the same packages: both come from scripts/system-packages.txt."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def listed_packages() -> list[str]:
    packages = []
    for line in (REPO / "scripts" / "system-packages.txt").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            assert len(fields) >= 2, f"a line needs a probe and at least one package: {line!r}"
            packages += fields[1:]
    return packages


def test_readme_installs_exactly_the_listed_packages():
    commands = [ln for ln in (REPO / "README.md").read_text().splitlines() if ln.startswith("sudo apt-get install -y ")]
    assert len(commands) == 1, commands
    assert commands[0].split()[4:] == listed_packages()


def test_ci_reads_the_list():
    assert "scripts/system-packages.txt" in (REPO / ".ci" / "run").read_text()
