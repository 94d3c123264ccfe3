"""The embedded LLM (internal): ``model.py`` runs llama.cpp in process (the ``local`` extra),
``writer.py`` composes the emails from a few short answers a small model can give."""
