"""Every override of another library's private internals, one module per library (rq, redis-py, ...)."""
