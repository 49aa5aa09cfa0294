"""Model cards: vendor Markdown rendered to HTML that is safe to show to anyone.

markdown-it-py renders with raw HTML off (tags in the source come out escaped) and its own
link validation (no ``javascript:``/``vbscript:``/``data:`` links); nh3 (ammonia) then keeps
only an allow-list of tags and attributes and only http(s)/mailto URLs, so a bug in either
layer alone does not let script, event handlers or dangerous links through.

Images load only from the marketplace's own origin (root-relative paths such as
``/media/x.png``): an image on another host is fetched by every reader's browser, which tells
that host who read the card and when (a tracking pixel). Markdown images elsewhere are rendered
as plain links to them, and the sanitiser drops any other ``img`` source as a second layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token

# A path on this origin: one leading slash, not two, and no backslash anywhere (browsers read
# "/\host" and "\\host" as "//host", another origin), no whitespace or control characters.
_SAME_ORIGIN_PATH = re.compile(r"/(?![/\\])[^\s\\\x00-\x1f\x7f]*")


def is_same_origin_path(url: str) -> bool:
    """Whether ``url`` is a root-relative path, which the browser resolves on our origin."""
    return _SAME_ORIGIN_PATH.fullmatch(url) is not None


def _render_image(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    if is_same_origin_path(src):
        return str(self.image(tokens, idx, options, env))
    alt = self.renderInlineAsText(token.children or [], options, env)
    return f'<a href="{escapeHtml(src)}">{escapeHtml(alt or src)}</a>'


_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_md.add_render_rule("image", _render_image)

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


def _keep_attribute(tag: str, attribute: str, value: str) -> str | None:
    if tag == "img" and attribute == "src" and not is_same_origin_path(value):
        return None
    return value


def render_model_card(markdown: str) -> str:
    """Sanitised HTML for a model card."""
    html = _md.render(markdown)
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        attribute_filter=_keep_attribute,
        url_schemes={"http", "https", "mailto"},
        link_rel="nofollow noopener noreferrer",
        strip_comments=True,
    )
