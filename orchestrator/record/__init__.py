"""`orch record`: a study's certified result as a record folder in a track's layout (build: what it says, from
the database; logs: the counted runs' logs; layouts: the files of each track, from jinja2 templates)."""
