"""Layer **run**: one doit run — story selection, task actions, the service hub (response
cache, limits, retries, ledger), dispatch order, the reporter and the run's summary, and the
``dodo.py`` entry. Imports core, services, data and graph only."""
