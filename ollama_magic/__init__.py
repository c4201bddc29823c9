"""ollama_magic: chat with a local Ollama model from Jupyter cells.

`%load_ext ollama_magic` registers the `%%ollama` / `%ollama` magics. Every
cell continues one conversation, kept per kernel and sent whole to Ollama's
chat API each time. Importing this package is light: the magics (and the
`ollama` client) load with the extension, ipywidgets only with a panel.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_ipython_extension", "unload_ipython_extension"]

# The loaded magics per shell, so unload removes exactly what load added.
_LOADED: dict[int, Any] = {}


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics, their settings and the cell-event hooks."""
    if id(ipython) in _LOADED:
        return  # loading twice is harmless
    from .magics import OllamaMagics

    magics = OllamaMagics(shell=ipython, parent=ipython)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:  # IPython >= 9 adds Magics itself
        ipython.configurables.append(magics)
    ipython.events.register("pre_run_cell", magics.pre_run_cell)
    ipython.events.register("post_run_cell", magics.post_run_cell)
    _LOADED[id(ipython)] = magics


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics, their settings and the hooks that load added."""
    magics = _LOADED.pop(id(ipython), None)
    if magics is None:
        return
    magics.close()
    for event, callback in (("pre_run_cell", magics.pre_run_cell), ("post_run_cell", magics.post_run_cell)):
        try:
            ipython.events.unregister(event, callback)
        except ValueError:
            pass
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("ollama", None)
    ipython.magics_manager.registry.pop(type(magics).__name__, None)
    ipython.configurables[:] = [c for c in ipython.configurables if c is not magics]
