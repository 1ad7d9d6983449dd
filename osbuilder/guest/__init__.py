"""Files that run inside the guest (the agent launcher), shipped as data by the builders."""
