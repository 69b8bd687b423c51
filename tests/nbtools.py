"""Build small notebooks for runner tests (the real ones live in notebooks/)."""
from pathlib import Path

import nbformat

KERNEL = {"name": "mousefacelift", "display_name": "Python (mousefacelift)", "language": "python"}


def make_notebook(path: Path, params_src: str, *code_cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNEL
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {path.stem}"))
    cell = nbformat.v4.new_code_cell(params_src)
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(src) for src in code_cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path
