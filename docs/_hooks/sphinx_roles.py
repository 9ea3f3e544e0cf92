"""mkdocs hook: show Sphinx roles left in docstrings as plain code.

A few docstrings in ``src/`` still write ``:class:`Task``` or ``:meth:`join```.
mkdocstrings does not read Sphinx roles, so without this hook the page would show
the role's name in front of the code span.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):(?=<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub("", html)
