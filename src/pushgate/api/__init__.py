"""HTTP API, health, readiness, metrics and the OpenAPI document."""
