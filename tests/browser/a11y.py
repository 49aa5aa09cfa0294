"""Checks run inside the page: WCAG AA text contrast and a visible label for every control."""

from __future__ import annotations

from typing import Any

# For each visible element with its own text: the text colour against the first opaque
# background behind it (walking up the tree), as WCAG 2.x defines contrast. Large text
# (24px, or 18.66px bold) needs 3:1, the rest 4.5:1.
_CONTRAST = """
() => {
  const parse = c => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = c => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const background = el => { for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor); if (c && c.a >= 0.99) return c; }
    return {r: 255, g: 255, b: 255, a: 1}; };
  const failures = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest('svg, [hidden], .sr, .skip')) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.display === 'none' || el.getClientRects().length === 0) continue;
    const fg = parse(style.color), bg = background(el);
    const l1 = lum(fg), l2 = lum(bg);
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight, 10) >= 700;
    const needed = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    if (ratio < needed) failures.push(`${el.tagName} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
  }
  return failures;
}
"""

_LABELS = """
() => {
  const failures = [];
  const visible = el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
  for (const el of document.querySelectorAll('input, select, textarea, button')) {
    if (el.type === 'hidden' || !visible(el)) continue;
    if (el.tagName === 'BUTTON') { if (!el.textContent.trim()) failures.push('button without text'); continue; }
    const labels = Array.from(el.labels || []).filter(visible);
    if (!labels.length || !labels.some(l => l.textContent.trim())) failures.push(`${el.tagName} #${el.id || el.name}`);
  }
  return failures;
}
"""


def check_page(page: Any) -> None:
    """Fail with the offending elements when a text's contrast or a control's label is missing."""
    contrast = page.evaluate(_CONTRAST)
    assert contrast == [], f"{page.url}: contrast below WCAG AA: {contrast[:10]}"
    labels = page.evaluate(_LABELS)
    assert labels == [], f"{page.url}: controls without a visible label: {labels[:10]}"
