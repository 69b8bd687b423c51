"""``runs/<name>/report.html``: the index of a run. One section per notebook: status, time, its
declared headline results, thumbnails of its figures, and links to two HTML exports of the
executed notebook in ``html/``: ``NN_name.html`` without code cells (the report to read) and
``NN_name.code.html`` with them.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

from .runlog import format_headline, headline

log = logging.getLogger(__name__)

THUMB_PX = 220       # the longer side of a thumbnail
MAX_THUMBS = 12      # per notebook


def export_html(nb_path: Path, out_path: Path, code: bool = True) -> None:
    """The executed notebook as one HTML file; without input cells and prompts when not ``code``."""
    import nbformat
    from nbconvert import HTMLExporter

    # nbconvert warns about every figure without alt text (all of matplotlib's): not ours to fix
    quiet = logging.getLogger(f"{__name__}.nbconvert")
    quiet.setLevel(logging.ERROR)
    exporter = HTMLExporter(log=quiet, exclude_input=not code, exclude_input_prompt=not code,
                            exclude_output_prompt=not code)
    body, _ = exporter.from_notebook_node(nbformat.read(str(nb_path), as_version=4))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(body)


def figures(nb_path: Path) -> list[bytes]:
    """The PNG figures of an executed notebook, in order (image/png outputs)."""
    nb = json.loads(nb_path.read_text())
    pngs = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {}).get("image/png")
            if data:
                pngs.append(base64.b64decode("".join(data) if isinstance(data, list) else data))
    return pngs


def thumbnails(nb_path: Path, out_dir: Path, limit: int = MAX_THUMBS) -> list[Path]:
    """Small copies (longer side :data:`THUMB_PX`) of the first ``limit`` figures of a notebook,
    written to ``out_dir/<stem>_<k>.png``."""
    from PIL import Image

    paths = []
    for k, png in enumerate(figures(nb_path)[:limit]):
        out_dir.mkdir(parents=True, exist_ok=True)
        im = Image.open(io.BytesIO(png))
        im.thumbnail((THUMB_PX, THUMB_PX))
        path = out_dir / f"{nb_path.stem}_{k}.png"
        im.save(path)
        paths.append(path)
    return paths


def write_report(run_dir: Path) -> Path:
    """report.html for the run folder ``run_dir`` (exports and thumbnails under ``html/``). A
    notebook whose export fails is listed with the reason; the others are unaffected."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    sections = []
    for stem, entry in manifest["notebooks"].items():
        nb = run_dir / f"{stem}.ipynb"
        name, links, thumbs = html.escape(stem), [], ""
        if nb.is_file():
            try:
                export_html(nb, run_dir / "html" / f"{stem}.html", code=False)
                export_html(nb, run_dir / "html" / f"{stem}.code.html", code=True)
                links = [f'<a href="html/{name}.html">report</a>', f'<a href="html/{name}.code.html">with code</a>']
                thumbs = "".join(f'<a href="html/{name}.html"><img src="{p.relative_to(run_dir).as_posix()}" '
                                 f'alt="figure {k + 1} of {name}"></a>'
                                 for k, p in enumerate(thumbnails(nb, run_dir / "html" / "thumbs")))
            except Exception as e:  # an export problem must not hide the run's own outcome
                log.warning("HTML export of %s failed: %s", nb, e)
                links = [f"HTML export failed: {html.escape(str(e))}"]
        if entry.get("log"):
            links.append(f'<a href="{html.escape(entry["log"])}">cell log</a>')
        status = entry.get("status")
        err = f"<br><small>{html.escape(entry.get('error', ''))}</small>" if entry.get("error") else ""
        head = headline(entry, manifest.get("params", {}).get(stem)) if entry.get("results") else {}
        values = {k: format_headline({k: v}).split("=", 1)[1] for k, v in head.items()}
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in values.items())
        status = html.escape(str(status))
        sections.append(f"""<section><h2>{name} <span class='{status}'>{status}</span>
<small>{entry.get('duration_s', '')} s &middot; {' &middot; '.join(links)}</small></h2>{err}
{f'<table>{rows}</table>' if rows else ''}<div class="thumbs">{thumbs}</div></section>""")
    overrides = "".join(f" <code>--set {html.escape(o)}</code>" for o in manifest.get("overrides", []))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>run {html.escape(manifest['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} td{{padding:2px 10px;border-bottom:1px solid #ddd}}
h2{{font-size:1.1em;margin:1.5em 0 .3em}} h2 small{{font-weight:normal;color:#555}}
.thumbs img{{margin:4px;border:1px solid #ccc}}
.ok{{color:#070}} .failed{{color:#b00}} .interrupted{{color:#b60}}</style>
</head><body>
<h1>mouse-facelift run: {html.escape(manifest['name'])}</h1>
<p>params: <code>{html.escape(manifest['params_file'])}</code>{overrides}
&middot; commit <code>{html.escape(str(manifest.get('git_commit')))}</code>
{'(dirty)' if manifest.get('git_dirty') else ''} &middot; status <b>{html.escape(manifest['status'])}</b>
&middot; started {html.escape(manifest.get('started', ''))}</p>
{''.join(sections)}
<p>Manifest: <a href="manifest.json">manifest.json</a></p></body></html>"""
    path = run_dir / "report.html"
    path.write_text(doc)
    return path
