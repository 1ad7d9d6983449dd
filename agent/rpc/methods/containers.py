"""RPC handlers: containers. (Filled in by the containers work.)"""
