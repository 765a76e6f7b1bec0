"""HTTP over the data plane: the front middleware and app class (middleware.py), error answers (errors.py), the
request helpers (request.py) and task routes' dependency (call.py), guards (auth.py), the uvicorn protocol
(protocol.py), the OpenAPI document (openapi.py), and the pages people open (landing.py, docs_ui.py)."""
