"""The vLLM engine: steering inside vLLM's decoder layers (the plugin, in every vLLM worker) and `VllmEngine`
(the `EngineClient` over vLLM's in-process async engine). Only `plugin.py`, `model_state.py` and `engine.py`
import vLLM; `layout.py` and `tokens.py` are plain torch, shared by both sides and testable without vLLM."""
