"""The live gateway (`distillery serve`): an OpenAI-compatible HTTP server that routes each
request through the workers' answering step and records it as a prompt of a live job."""
