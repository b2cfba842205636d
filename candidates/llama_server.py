"""``python -m candidates.llama_server ARGS``: ``python -m llama_cpp.server ARGS`` (the real llama-cpp-python
OpenAI-compatible server), with llama.cpp's AMX buffers turned off on CPUs where they crash
(see ``candidates.llama_compat``)."""

from candidates.llama_compat import main

if __name__ == "__main__":
    main()
