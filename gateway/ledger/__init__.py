"""The usage ledger: one durable record per call (records.py), written off the request path in
batches (writer.py) to SQLite (sqlite.py, the embedded default) or PostgreSQL (postgres.py, for
several replicas); the stage that records each call (stage.py). Imports nothing here:
gateway.config imports config.py."""
