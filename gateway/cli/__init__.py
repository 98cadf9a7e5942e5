"""The `meshgate` command: serve and check-config (main.py), the client commands models and
infer (client.py), register and deregister in Consul (consul.py)."""
