"""`orch init`: a commented fleet file and study file to start from, for the project's trainer or a checkout of
modded-nanogpt, parameter-golf or nanochat. The templates are YAML files beside this module (templates/); the
study's `{code_dir}` (where the trainer's checkout lies, relative to the study file) is filled in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
TRAINERS = {  # trainer -> (its study template, where its checkout is expected by default)
    "orch": ("study-orch.yaml", None),
    "modded-nanogpt": ("study-modded-nanogpt.yaml", "modded-nanogpt"),
    "parameter-golf": ("study-parameter-golf.yaml", "parameter-golf"),
    "nanochat": ("study-nanochat.yaml", "nanochat"),
}
FLEET_FILE, STUDY_FILE = "fleet.yaml", "study.yaml"


@dataclass
class Written:
    path: Path
    what: str


class Exists(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def render(trainer: str, code_dir: str | None = None) -> dict[str, str]:
    """File name -> text of the files `orch init` writes for `trainer`."""
    template, default_dir = TRAINERS[trainer]
    study = (TEMPLATES / template).read_text(encoding="utf-8")
    if default_dir is not None:  # inside double quotes in the template: escaped as a JSON (= YAML) string
        study = study.replace("{code_dir}", json.dumps(code_dir or default_dir)[1:-1])
    return {FLEET_FILE: (TEMPLATES / "fleet.yaml").read_text(encoding="utf-8"), STUDY_FILE: study}


def write(directory: Path, trainer: str, code_dir: str | None = None, force: bool = False) -> list[Written]:
    """Write the files into `directory` (created); an existing one is kept unless `force` (Exists names it)."""
    files = render(trainer, code_dir)
    if not force:
        for name in files:
            if (directory / name).exists():
                raise Exists(directory / name)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
        out.append(Written(directory / name, "fleet inventory" if name == FLEET_FILE else f"{trainer} study"))
    return out


__all__ = ["TRAINERS", "FLEET_FILE", "STUDY_FILE", "Exists", "Written", "render", "write"]
