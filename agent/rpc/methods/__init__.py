"""Handlers by area; importing ``load_all`` registers every implemented method in the registry."""

from __future__ import annotations

import importlib

AREAS = ("guest", "containers", "hotplug", "network", "storage", "memagent")


def load_all() -> None:
    for area in AREAS:
        importlib.import_module(f"agent.rpc.methods.{area}")
