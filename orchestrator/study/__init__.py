"""The one package that talks to Optuna: a study's two halves (our `orch_studies` row and its Optuna study) created,
opened and deleted (`lifecycle`), the storage a controller runs them through under its lease (`leased_storage`,
`lease`), which trial a free slot takes (`queue`), a finished job's outcome told to Optuna and retries queued
(`outcomes`), the operations on stored trials the rest of the project needs (`trials`), and past runs imported from a
table (`csv_import`). Optuna's private API is used here and in `samplers/` only, so an Optuna upgrade breaks this
package and nothing else. Import the module you need: the package imports nothing itself."""
