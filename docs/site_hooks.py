"""mkdocs hooks: the site's first page is the README, and the benchmark method and results
are read from benchmarks/, so each text lives in one place."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
    def add(src_uri: str, path: Path) -> None:
        files.append(File.generated(config, src_uri, abs_src_path=str(path)))

    add("index.md", ROOT / "README.md")
    add("benchmarks/README.md", ROOT / "benchmarks" / "README.md")
    for result in sorted((ROOT / "benchmarks" / "results").glob("*/results.*")):
        if result.suffix in (".md", ".png"):
            add(result.relative_to(ROOT).as_posix(), result)
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "index.md":
        # The README links docs/… from the repository root; on the site they sit at the root.
        markdown = re.sub(r"\]\(docs/", "](", markdown)
    return markdown
