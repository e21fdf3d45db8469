"""Engines: every backend behind the sampler's two calls, `backbone` and `detailer`."""
