"""`python -m bench.gpu`: the GPU suite (see __main__.py). Measurement only; the library does the work."""
