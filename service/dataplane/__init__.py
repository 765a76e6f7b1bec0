"""The protocol-neutral data plane: which version answers, admission, deadlines and disconnects, the run and
the answers (plane.py), the request context (context.py), bodies (bodies.py), the work pool (workpool.py),
who may call what (access.py)."""
