"""MkDocs hook: fail the strict build when README.md links to a file that is not there.

README.md lives outside the site, so MkDocs does not check its links; they point into docs/ and
at files of the repository, and a renamed page would break them silently.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.readme_links")

#: Markdown links and images, ``[text](target)``; the target up to a space or ``)``.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)")


def on_config(config: Any) -> Any:
    """Warn (an error under ``--strict``) for each relative README link whose file is missing."""
    root = Path(config["config_file_path"]).parent
    readme = root / "README.md"
    for target in _LINK.findall(readme.read_text(encoding="utf-8")):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = target.split("#", 1)[0]
        if path and not (root / path).exists():
            log.warning("README.md links to %s, which does not exist", target)
    return config
