"""Stores: shared counters behind one seam (counters.py: the Counters protocol), in memory for
one process and in Redis for several replicas (redis_store.py). Every operation is atomic at
the algorithm level: a multi-bucket take checks and takes in one step, never a read, a decision
in Python and a write."""
