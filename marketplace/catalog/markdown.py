"""Model cards: vendor Markdown rendered to HTML that is safe to show to anyone.

markdown-it-py renders with raw HTML off (tags in the source come out escaped) and its own
link validation (no ``javascript:``/``vbscript:``/``data:`` links); nh3 (ammonia) then keeps
only an allow-list of tags and attributes and only http(s)/mailto URLs, so a bug in either
layer alone does not let script, event handlers or dangerous links through.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "li", "ol", "p", "pre", "strong", "sub", "sup", "table", "tbody",
    "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "td": {"align"},
    "th": {"align"},
}


def render_model_card(markdown: str) -> str:
    """Sanitised HTML for a model card."""
    html = _md.render(markdown)
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="nofollow noopener noreferrer",
        strip_comments=True,
    )
