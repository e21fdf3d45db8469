"""Stand-ins for the GPU stack that enforce the rules of the real one (see each module's docstring)."""
