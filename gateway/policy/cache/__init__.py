"""The response cache (stage.py), its memory store (store.py) and config (config.py). Imports
nothing here: gateway.config imports config.py."""
