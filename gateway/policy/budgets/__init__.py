"""Budgets in money or tokens per department, project, user or API key (stage.py), their
windows (windows.py) and config (config.py). Imports nothing here: gateway.config imports
config.py."""
