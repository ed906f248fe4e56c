"""Layer **graph**: steps and their kinds, the artifact graph of a template, task creation,
targets (atomic writes, history, manifest), locks, completion records and story seals. Imports
core, services (request types) and data only."""
