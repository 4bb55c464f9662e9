"""Liveness of trials and machines (issue 18): what keeps a hung run, a busy GPU or a sick machine from costing runs.

- `watchdog`: a running trial whose log shows no progress for the study's `stall_s` is killed and recorded `hung`;
- `gpu_guard`: a GPU set with processes this controller did not start on it (nvidia-smi) gets no trial;
- `health_check` (+ `check_program`, run on the machine): a machine's pre-flight check before its first trial and
  after a failure; one that fails is `sick` and gets no trials until it passes;
- `refusals`: every reason a machine gets no trials, as one record the controller reports, stores as events and
  the status views show.

The controller (orchestrator/run/) drives all of them from the events the launchers stream, so they work
the same for every launcher.
"""
