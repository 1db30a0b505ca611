"""The real-model world: Gemma 3 270M from its PyPI package (`sparse-steer[gemma3]`), converted once into a plain
safetensors folder (`convert.py`), with an SAE, culture data and vectors built on it (`steer demo build --preset
gemma3-270m`)."""
