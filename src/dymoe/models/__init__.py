"""Backbones: load any Hugging Face VLM / causal LM from disk (:mod:`.llava`) and build tiny offline ones (:mod:`.tiny`)."""
