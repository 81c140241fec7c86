"""deployer: one provider-neutral YAML spec -> a running, OpenAI-compatible vLLM endpoint."""

__version__ = "0.1.0"
