"""One fleet, many studies: the fleet-level scheduler (issue 20).

Every controller that uses a results database shares its machines through it. A machine's GPUs (or CPU slots) are
kept 32 to a row of `orch_slot_blocks` as a mask of the free ones; a trial holds the units of its slot, claimed by one
conditional UPDATE that clears their bits only where all of them are still set (SQLite: inside the BEGIN IMMEDIATE
every transaction opens with; PostgreSQL: a second claimant of a block row waits for the first one's commit and then
reads the new mask), with a row of `orch_slot_claims` saying who holds them for which trial. The claim is made in the
controller's dispatch transaction, so at most one trial across all studies and controllers holds a GPU. A claim
carries a lease its controller's heartbeat renews; a dead controller's claims are given again only once its launcher
says the job no longer runs (`reaper`).

Which study gets a free slot is the policy (`policy`): a higher `scheduling.priority` first, then, between studies of
equal priority, the one that used the fewest GPU-seconds recently (a decayed sum, `window_s`), within each study's
`scheduling.max_gpus`. Every controller runs the same allocation over the same database rows (each study's demand
row: what it wants and holds; a trial's end frees its slot and adds one to its study's want in one commit, so the slot
is never seen free while its study seems to want nothing) and claims only what falls to its own study; a study that
gets nothing waits (a state, not a failure) and says for what (`orch study status`, `orch fleet queue`). Machines whose resource manager queues jobs itself (Capability.QUEUES_JOBS: Slurm) are
not claimed: orch submits and the manager arbitrates.

Parts: `units` (slots as units, keys), `policy` (pure: usage decay, ranking, allocation), `store` (the SQL), `client`
(`FleetClaims`, what the controller's loop calls), `reaper` (dead controllers' claims), `view` (the queue as data, for
`orch fleet queue`, `orch fleet status` and `orch study status`).
"""

from .client import FleetClaims
from .view import fleet_queue, study_waiting

__all__ = ["FleetClaims", "fleet_queue", "study_waiting"]
