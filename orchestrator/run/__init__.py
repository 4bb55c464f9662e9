"""One study run (`orch study run` and the extra-run commands): the controller's loop (`controller`), where its
trials come from (`sources`), every write about them (`ledger`), the fleet as the run sees it (`fleet_state`),
crash recovery at its start (`recovery`), and requests from other processes (`control`: `orch study stop`,
`orch trial cancel`). Import the module you need: the package imports nothing itself."""
