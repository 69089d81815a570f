"""Progress bars: widgets in Jupyter (JupyterLab, nbmake), text on stderr in a terminal.

`tqdm.auto` picks the kind by where it runs. In Jupyter, a bar is a widget while it runs and becomes
its last line as plain text when it closes: a saved notebook then shows every bar's final state
without widget state, which JupyterLab can keep only by marking every reopened notebook unsaved
(and without which a bar would read "Error displaying widget: model not found" after a restart).

`tsae run` wants text: it executes each notebook in a kernel with papermill and forwards the kernel's
stderr to its own terminal, where a widget would show nothing, so it starts its kernels with
TSAE_PROGRESS=text (`tsae_core.notebook_exec`).
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm as _auto

# tqdm.auto's class derives from tqdm.notebook's where it chose widgets
if os.environ.get("TSAE_PROGRESS") == "text" or not any(c.__module__ == "tqdm.notebook" for c in _auto.__mro__):
    from tqdm import tqdm
else:
    from IPython.display import display

    class tqdm(_auto):  # noqa: N801 (the name every call site knows)
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, display=False, **kwargs)
            # shown here, with a handle, so that close() can put the text in the widget's place
            self._handle = None if self.disable else display(self.container, display_id=True)
            self.displayed = True

        def close(self) -> None:
            was_open = not self.disable
            super().close()
            if was_open and self._handle is not None:
                self._handle.update({"text/plain": str(self)}, raw=True)
                self.container.close()  # nothing shows it any more: free its model in the kernel and the page
