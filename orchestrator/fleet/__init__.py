"""The fleet's own parts, used by every study run: the slot plan of each machine (`scheduler`), background probes of
machines that are down (`health`), draining a machine (`drain`), and the check that a study fits the fleet at all,
before anything is written (`preflight`). Import the module you need: the package imports nothing itself."""
