"""llama-cpp-python's OpenAI-compatible server, with llama.cpp's extra CPU buffers off.

``python -m testbed.llama_server --model … --port …`` takes the arguments of ``python -m
llama_cpp.server`` and runs that very server; only the model is loaded as the embedded model
is (``plain_cpu_buffers``: on CPUs with AMX, llama.cpp's AMX buffer crashes the process on the
first token). The slow tier's real-server test (tests/local/test_llama_server.py) starts it.
"""

from __future__ import annotations

import runpy

from bridgic_coldmail.llm.local.model import plain_cpu_buffers

if __name__ == "__main__":
    # A process of its own: the defaults stay patched for as long as the server runs.
    with plain_cpu_buffers():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
