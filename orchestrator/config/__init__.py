"""Typed configuration models (fleet inventory, study definitions), validated at the edge: `fleet.py` (the machine
models the launchers build on), `fleet_file.py` (reading a fleet file), `study.py`, and the errors, YAML source and
validation helpers every part uses. Import the module you need: the package imports nothing, so a launcher that
reads `config.fleet` does not load the study models."""
