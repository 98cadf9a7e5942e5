"""Fair admission (queue.py, stage.py) and its config (config.py). Imports nothing here:
gateway.config imports config.py."""
