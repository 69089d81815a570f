# Configuration of `make lab` (jupyter lab --config=jupyterlab/jupyter_server_config.py).
from pathlib import Path

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

c = get_config()  # noqa: F821 (defined by the config loader)

# Rooted at the project, wherever it is started from: jupytext finds jupytext.toml only inside the
# server's root, and runs/, figures/ and the dashboard are then in the file browser.
c.ServerApp.root_dir = str(Path(__file__).resolve().parent.parent)
c.LabApp.default_url = "/lab/tree/notebooks"


class EachNotebookOnce(AsyncLargeFileManager):
    """A folder's listing without the .ipynb files paired with a percent script beside them: the
    notebook is listed once, as its script (which opens as a notebook, outputs included)."""

    async def get(self, path, content=True, type=None, format=None, require_hash=False):
        model = await super().get(path, content=content, type=type, format=format, require_hash=require_hash)
        if model["type"] == "directory" and model["content"]:
            names = {m["name"] for m in model["content"]}
            model["content"] = [m for m in model["content"]
                                if not (m["name"].endswith(".ipynb") and m["name"].removesuffix(".ipynb") + ".py" in names)]
        return model


# jupytext's server extension derives its contents manager from this class
c.ServerApp.contents_manager_class = EachNotebookOnce
