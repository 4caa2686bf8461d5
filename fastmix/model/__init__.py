"""Shared base: what is trained (ConvMixer and its registered variants) and what each of its ops
costs (FLOPs, parameters, saved activations, bytes moved). Imports nothing else of fastmix."""
