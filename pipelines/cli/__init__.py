"""The `imgclf` command: `main` (run, compile, predict, step, registry, sample-data), `remote` (submit,
schedule, runs) and `deploy`."""
