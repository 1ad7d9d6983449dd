"""RPC handlers: network. (Filled in by the network work.)"""
