"""RPC handlers: storage. (Filled in by the storage work.)"""
