"""Static HTML galleries of results: each input beside its output, with its parameters.

The pages are self-contained (inline CSS and JS, nothing fetched but the images), so they
open from a folder, a zip or a private bucket. Failures come first, with their reasons.
Big batches are split into pages of ``page_size`` items (``index.html``, ``page-2.html``,
...) linked by prev/next, and images load lazily, so a 10k-job batch stays usable.

Input: result records as dicts (the contract's ResultRecord JSON). A record that ran
carries its family and ``generation`` (strength and steps among them, the family's
defaults filled in); a record without one shows ``strength``/``steps`` keys when the
caller joined them from the job's parameters, else leaves them out.

Each page's ``<body>`` reports how its images did in ``data-images-total``,
``data-images-loaded`` and ``data-images-broken``, updated as they load, so a browser
(or a test driving one) can tell that every image on the page arrived.
"""

from __future__ import annotations

import html
import os
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

INDEX = "index.html"
DEFAULT_PAGE_SIZE = 100
Role = Literal["input", "output"]
# Where an image comes from for a page: a relative path or a URL; None: not available.
ImageSource = Callable[[Mapping[str, Any], Role], "str | None"]
PageHref = Callable[[int], str]
# Failures first (the reason someone opens the page), then unfinished, then done.
_STATUS_ORDER = {"failed": 0, "running": 1, "done": 2}


@dataclass(frozen=True)
class GalleryPage:
    number: int  # 1-based
    name: str  # the file name: index.html, page-2.html, ...
    html: str


def page_file_name(number: int) -> str:
    return INDEX if number == 1 else f"page-{number}.html"


def ordered(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Failures first, then running, then done; by input within each."""
    return sorted(records, key=lambda r: (_STATUS_ORDER.get(str(r.get("status")), 1),
                                          str(r.get("input", "")), str(r.get("job_id", ""))))


def render_gallery(records: Iterable[Mapping[str, Any]], *, image_src: ImageSource,
                   title: str = "img2img results", page_size: int = DEFAULT_PAGE_SIZE,
                   page_href: PageHref = page_file_name) -> list[GalleryPage]:
    """The gallery's pages (at least one, possibly empty), in order.

    ``page_href(n)`` is how page n is linked from the others: its file name for a
    folder, a presigned URL for a private bucket.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1 (got {page_size})")
    items = ordered(records)
    counts = {status: sum(1 for r in items if r.get("status") == status)
              for status in ("done", "failed", "running")}
    chunks = [items[i:i + page_size] for i in range(0, len(items), page_size)] or [[]]
    pages = []
    for number, chunk in enumerate(chunks, start=1):
        cards = "\n".join(_card(record, image_src) for record in chunk)
        nav = _nav(number, len(chunks), page_href)
        first = (number - 1) * page_size + 1
        shown = (f"items {first}&ndash;{first + len(chunk) - 1} of {len(items)}"
                 if chunk else "no results")
        summary = (f"done {counts['done']}, failed {counts['failed']}"
                   + (f", running {counts['running']}" if counts["running"] else "")
                   + (f"; failures are listed first (pages 1&ndash;"
                      f"{(counts['failed'] - 1) // page_size + 1})"
                      if counts["failed"] else ""))
        body = (f"<header><h1>{_text(title)}</h1><p class=\"summary\">{summary}</p>"
                f"<p class=\"summary\">page {number} of {len(chunks)}, {shown}</p>{nav}"
                f"</header>\n<main>\n{cards}\n</main>\n<footer>{nav}</footer>")
        pages.append(GalleryPage(number, page_file_name(number), _document(
            f"{title} ({number}/{len(chunks)})", body)))
    return pages


def local_image_src(folder: Path) -> ImageSource:
    """Images as paths relative to ``folder``: a record's ``local_input``/``local_output``
    when present (copies next to the page), else its ``input``/``output`` when those are
    local files (folder mode); S3 URIs have no local image."""
    base = folder.resolve()

    def src(record: Mapping[str, Any], role: Role) -> str | None:
        path = record.get(f"local_{role}") or record.get(role)
        if not path or not isinstance(path, str) or "://" in path:
            return None
        relative = os.path.relpath(Path(path).resolve(), base)
        return quote(Path(relative).as_posix())

    return src


def write_gallery(records: Iterable[Mapping[str, Any]], folder: Path, *,
                  title: str = "img2img results",
                  page_size: int = DEFAULT_PAGE_SIZE) -> Path:
    """Write the gallery of local images into ``folder``; return its ``index.html``.

    For a folder run (records' ``input``/``output`` are paths) and for copies made next
    to the page (records carrying ``local_input``/``local_output``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    pages = render_gallery(records, image_src=local_image_src(folder), title=title,
                           page_size=page_size)
    for page in pages:
        (folder / page.name).write_text(page.html, encoding="utf-8")
    current = {page.name for page in pages}
    for stale in folder.glob("page-*.html"):  # pages an earlier, bigger run left
        if stale.name not in current:
            stale.unlink()
    return folder / INDEX


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _name(path: str) -> str:
    return posixpath.basename(path.replace("\\", "/")) or path


def _figure(role: Role, src: str | None, name: str, missing: str) -> str:
    """One image with its role and file name; ``missing`` stands in when there is none."""
    if src is None:
        picture = f"<div class=\"missing\">{_text(missing)}</div>"
    else:
        picture = (f"<a href=\"{_text(src)}\"><img src=\"{_text(src)}\" "
                   f"alt=\"{role} {_text(name)} (cannot be shown)\" loading=\"lazy\" "
                   "decoding=\"async\"></a>")
    return (f"<figure>{picture}<figcaption><b>{role}</b> {_text(name)}</figcaption>"
            "</figure>")


def _loras(value: Any) -> str | None:
    """A record's adapters as ``ref:scale, ...`` (records hold them as objects)."""
    if not isinstance(value, list) or not value:
        return None
    return ", ".join(f"{v.get('ref')}:{v.get('scale', 1):g}" if isinstance(v, Mapping)
                     else str(v) for v in value)


def _card(record: Mapping[str, Any], image_src: ImageSource) -> str:
    status = str(record.get("status", "?"))
    source = str(record.get("input", ""))
    output = record.get("output")
    ran = record.get("generation") or {}  # what it ran with, family defaults filled in
    rows: list[tuple[str, Any]] = [
        ("model", record.get("model")), ("family", record.get("family")),
        ("loras", _loras(record.get("loras"))),
        ("prompt", record.get("prompt")), ("seed", record.get("seed")),
        ("strength", ran.get("strength", record.get("strength"))),
        ("steps", ran.get("steps", record.get("steps"))),
        ("seconds", f"{record['seconds']:.2f}" if isinstance(
            record.get("seconds"), (int, float)) else None),
        ("worker", record.get("worker")), ("job", record.get("job_id")),
    ]
    meta = "".join(f"<dt>{name}</dt><dd>{_text(value)}</dd>" for name, value in rows
                   if value not in (None, ""))
    error = record.get("error") or {}
    reason = (f"<p class=\"error\"><b>{_text(error.get('type', 'error'))}</b>: "
              f"{_text(error.get('message', ''))}</p>" if status == "failed" else "")
    input_figure = _figure("input", image_src(record, "input"), _name(source),
                           "no local copy")
    output_figure = _figure("output", image_src(record, "output") if output else None,
                            _name(str(output)) if output else "",
                            "no local copy" if output else
                            "failed: no output" if status == "failed" else "not finished yet")
    return (f"<article class=\"card {_text(status)}\"><h2><span class=\"status\">"
            f"{_text(status)}</span> {_text(_name(source))}</h2>{reason}"
            f"<div class=\"pair\">{input_figure}{output_figure}</div><dl>{meta}</dl></article>")


def _nav(number: int, count: int, page_href: PageHref) -> str:
    if count == 1:
        return ""
    shown = sorted({1, count, *range(max(1, number - 2), min(count, number + 2) + 1)})
    links: list[str] = []
    if number > 1:
        links.append(f"<a rel=\"prev\" href=\"{_text(page_href(number - 1))}\">&larr; prev</a>")
    previous = 0
    for n in shown:
        if n - previous > 1:
            links.append("<span>&hellip;</span>")
        links.append(f"<b>{n}</b>" if n == number else
                     f"<a href=\"{_text(page_href(n))}\">{n}</a>")
        previous = n
    if number < count:
        links.append(f"<a rel=\"next\" href=\"{_text(page_href(number + 1))}\">next &rarr;</a>")
    return f"<nav>{' '.join(links)}</nav>"


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f5;color:#18181b}
header,footer{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd}
footer{border-top:1px solid #ddd}
h1{font-size:20px;margin:0 0 4px}.summary{margin:2px 0;color:#52525b}
nav{margin-top:6px}nav a,nav b,nav span{display:inline-block;padding:2px 6px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:14px;
padding:14px 20px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}
.card.failed{border-color:#dc2626;background:#fef2f2}
h2{font-size:14px;margin:0 0 6px;word-break:break-all}
.status{font-size:11px;text-transform:uppercase;padding:1px 6px;border-radius:3px;
background:#16a34a;color:#fff}.failed .status{background:#dc2626}
.running .status{background:#ca8a04}
.error{color:#991b1b;margin:4px 0 8px;word-break:break-word}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}
figure{margin:0}figcaption{font-size:11px;color:#71717a;word-break:break-all}
figcaption b{font-weight:600;color:#3f3f46}
img{display:block;width:100%;height:200px;object-fit:contain;background:#e4e4e7}
img.broken{outline:2px dashed #dc2626}figure a{color:#71717a;text-decoration:none}
.missing{height:200px;display:flex;align-items:center;justify-content:center;
background:#e4e4e7;color:#71717a;text-align:center}
dl{display:grid;grid-template-columns:auto 1fr;gap:1px 10px;margin:8px 0 0}
dt{color:#71717a}dd{margin:0;word-break:break-word}
"""

# Counts the page's images as they load (naturalWidth > 0) or break, on <body>'s data
# attributes; arrow keys go to the previous/next page.
_SCRIPT = """
(function () {
  var images = Array.prototype.slice.call(document.images);
  function tally() {
    var loaded = 0, broken = 0;
    images.forEach(function (img) {
      if (!img.complete) { return; }
      if (img.naturalWidth > 0) { loaded += 1; } else { broken += 1; img.classList.add("broken"); }
    });
    var data = document.body.dataset;
    data.imagesTotal = images.length;
    data.imagesLoaded = loaded;
    data.imagesBroken = broken;
  }
  images.forEach(function (img) {
    img.addEventListener("load", tally);
    img.addEventListener("error", tally);
  });
  tally();
  document.addEventListener("keydown", function (event) {
    var link = document.querySelector(event.key === "ArrowLeft" ? "a[rel=prev]"
                                      : event.key === "ArrowRight" ? "a[rel=next]" : "none");
    if (link) { window.location.href = link.href; }
  });
})();
"""


def _document(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"referrer\" content=\"no-referrer\">"
            f"<title>{_text(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body data-images-total=\"0\" data-images-loaded=\"0\" "
            f"data-images-broken=\"0\">\n{body}\n<script>{_SCRIPT}</script>\n</body></html>\n")
