"""Reading and writing things outside the process: base models, the Hub, packaged models."""
