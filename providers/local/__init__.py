"""The local backend: a real vLLM OpenAI server as a detached process on this machine."""
