"""RPC handlers: guest. (Filled in by the guest work.)"""
