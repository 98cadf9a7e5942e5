"""The request pipeline: RequestContext (context.py), the director and its stage order
(director.py, stages.py), the one attempt loop (attempts.py) and request validation."""
