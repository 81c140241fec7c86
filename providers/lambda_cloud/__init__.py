"""The lambda_cloud backend: see adapter.py (Provider) and options.py (its spec block)."""
