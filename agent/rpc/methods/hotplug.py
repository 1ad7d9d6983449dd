"""RPC handlers: hotplug. (Filled in by the hotplug work.)"""
