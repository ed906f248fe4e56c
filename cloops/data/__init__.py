"""Layer **data**: the project, its backlogs (JSON and CSV), templates, their validated config,
prompt variables and schemas. Imports core and services (to choose backends) only."""
