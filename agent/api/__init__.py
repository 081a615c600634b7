"""HTTP API: one module per resource, thin handlers over the domain."""
