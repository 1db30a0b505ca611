"""The engine: batched, per-row steered generation behind one interface (`server.engine.client.EngineClient`).

No HTTP and no request validation here; see docs/architecture.md for the modules and the request path.
"""
