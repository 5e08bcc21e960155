"""Provenance of generated video: an invisible watermark in every frame (watermark.py), signed C2PA Content
Credentials on every MP4 (credentials.py), both applied by the sampling job (stamp.py) and read back by
`--mode=verify` (verify.py); `python -m lumiere_jax.provenance make-dev-cert DIR` makes test certificates."""
