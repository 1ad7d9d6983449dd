"""pykata guest agent: serves Kata's agent API inside the VM."""

__version__ = "0.1.0"
