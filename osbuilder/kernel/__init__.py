"""The guest kernel: Debian's generic package (distro.py) or a build from linux-source (source.py)."""
