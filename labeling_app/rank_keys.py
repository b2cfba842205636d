"""Keyboard shortcuts for the ranking page: a small static script (never any untrusted text).

Keys: the replies' numbers 1..K in order of preference (best first), ``=`` then a number ties that
reply with the previous one, Backspace takes back the last step, Enter submits the ranking, ``s``
skips. Ignored while typing in a text field or with a modifier key held, and wherever the ranking
page's buttons are absent (the compare page's script, which may be loaded in the same window after
navigating, uses other widget keys: ``choice-…``/``skip-…`` there, ``rank_…`` here).
"""

from __future__ import annotations

from labeling_app.keyboard import script

#: Key (as ``event.key.toLowerCase()``) → the widget-key prefix of the button it clicks.
SHORTCUTS = {
    **{str(n): f"rank_pick_{n}" for n in range(1, 10)},
    "=": "rank_tie",
    "backspace": "rank_back",
    "enter": "rank_submit",
    "s": "rank_skip",
}

HELP = ("Keys: press the replies' numbers best first · **=** then a number: tie with the previous · "
        "**Backspace** undo the last step · **Enter** submit · **s** skip")

SCRIPT = """
<script>
(function () {
  if (window.__therapref_rank_keys) { return; }
  window.__therapref_rank_keys = true;
  const map = %MAP%;
%IGNORED%
  function keyed(prefix) {
    // Widget containers carry the class "st-key-" + key; keys here are prefix + "-" + screen id.
    // (No angle brackets in this script: the sanitizer drops scripts whose text contains tags.)
    for (const el of document.querySelectorAll('[class*="st-key-' + prefix + '-"]')) {
      for (const cls of el.classList) {
        if (cls.startsWith('st-key-' + prefix + '-')) { return el; }
      }
    }
    return null;
  }
  document.addEventListener('keydown', function (event) {
    if (ignored(event)) { return; }
    const prefix = map[(event.key || '').toLowerCase()];
    if (!prefix) { return; }
    const el = keyed(prefix);
    if (!el) { return; }
    // Also keeps Enter from pressing whichever button has the focus, as well as this one.
    event.preventDefault();
    const button = el.querySelector('button');
    if (button && !button.disabled) { button.click(); }
  });
})();
</script>
"""


def shortcut_script() -> str:
    """The ``<script>`` for ``st.html(..., unsafe_allow_javascript=True)``.

    Streamlit's sanitizer (DOMPurify) silently drops a script whose text contains anything that
    looks like a tag, so the body must stay free of angle brackets:

    >>> body = shortcut_script().split("<script>")[1].split("</script>")[0]
    >>> "<" in body or ">" in body
    False
    >>> '"=": "rank_tie"' in body and '"3": "rank_pick_3"' in body
    True
    """
    return script(SCRIPT, SHORTCUTS)
