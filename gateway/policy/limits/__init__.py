"""Rate limits (stage.py) and their config (config.py). Imports nothing here: gateway.config
imports config.py, and the stage imports gateway.config."""
