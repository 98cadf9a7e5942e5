"""Policy: who is calling (auth/), what they may do, and the audit trail of it. Rate limits,
budgets and the cache join here as stages of the request pipeline."""
