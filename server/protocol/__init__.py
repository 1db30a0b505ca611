"""Pydantic models of every request and response body (the HTTP boundary, nothing else), one module per
endpoint family: `generate`, `openai`, `tokenize`, `vectors`, `health`; `common` holds what they share."""
