"""Every text of the pages has a Chinese translation, and the compiled catalog is current."""

from __future__ import annotations

import gettext
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[3]
WEB = ROOT / "marketplace" / "web"
LC = WEB / "translations" / "zh" / "LC_MESSAGES"
METHODS = [("marketplace/**.py", "python"), ("marketplace/web/templates/**.html", "jinja2")]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "_l": None, "lazy_gettext": None}


def _extracted() -> set[str | tuple[str, ...]]:
    found: set[str | tuple[str, ...]] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT), METHODS, keywords=KEYWORDS
    ):
        found.add(message)
    return found


def test_every_page_text_is_translated_into_chinese():
    with (LC / "messages.po").open("rb") as f:
        catalog = read_po(f)
    extracted = _extracted()
    assert len(extracted) > 200  # the extraction itself works
    translated = {m.id for m in catalog if m.id and m.string and all(m.string)}
    missing = sorted(str(m) for m in extracted - translated)
    assert missing == [], f"untranslated (run pybabel extract/update, then translate): {missing}"


def test_the_compiled_catalog_matches_its_source():
    with (LC / "messages.po").open("rb") as f:
        catalog = read_po(f)
    with (LC / "messages.mo").open("rb") as f:
        compiled = gettext.GNUTranslations(f)
    for message in catalog:
        if not message.id:
            continue
        if isinstance(message.id, tuple):
            assert compiled.ngettext(message.id[0], message.id[1], 2) == message.string[0]
        else:
            assert compiled.gettext(message.id) == message.string, message.id
