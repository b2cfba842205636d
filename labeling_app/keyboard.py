"""Keyboard shortcuts for the compare page: a small static script (never any untrusted text).

Keys: 1 A better, 2 B better, 3 tie, 4 both bad, q/w/e strength slightly/clearly/much, s skip, u undo;
criteria (``criteria_script``): z A better, x tie, c B better on the current row, j/k next/previous row.
Ignored while typing in a text field or with a modifier key held.
"""

# Shared by every page's shortcut script (``script(body, mapping)`` puts it first): a key counts only
# when no text field has the focus and no modifier is held. No angle brackets anywhere in a script:
# Streamlit's sanitizer (DOMPurify) silently drops a script whose text looks like it holds a tag.
IGNORED_JS = """
  function ignored(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) { return true; }
    const target = event.target;
    const tag = target && target.tagName ? target.tagName.toLowerCase() : '';
    return tag === 'textarea' || tag === 'select' || (target && target.isContentEditable) ||
      (tag === 'input' && !['radio', 'checkbox', 'button', 'submit'].includes((target.type || '').toLowerCase()));
  }
"""


def script(template: str, mapping: dict) -> str:
    """A page's ``<script>`` from its template: the key map and the shared guard filled in."""
    import json

    return template.replace("%MAP%", json.dumps(mapping)).replace("%IGNORED%", IGNORED_JS)


SHORTCUTS = {
    "1": ("click", "choice-left"),
    "2": ("click", "choice-right"),
    "3": ("click", "choice-tie"),
    "4": ("click", "choice-both_bad"),
    "q": ("radio", "strength", 0),
    "w": ("radio", "strength", 1),
    "e": ("radio", "strength", 2),
    "s": ("click", "skip"),
    "u": ("click", "undo"),
}

HELP = "Keys: **1** A better · **2** B better · **3** tie · **4** both bad · " \
       "**q/w/e** slightly/clearly/much · **s** skip · **u** undo"

SCRIPT = """
<script>
(function () {
  if (window.__therapref_keys) { return; }
  window.__therapref_keys = true;
  const map = %MAP%;
%IGNORED%
  function keyed(prefix) {
    // Widget containers carry the class "st-key-" + key; keys here are prefix + "-" + token, or prefix.
    // (No angle brackets in this script: the sanitizer drops scripts whose text contains tags.)
    const all = document.querySelectorAll('[class*="st-key-' + prefix + '"]');
    for (const el of all) {
      for (const cls of el.classList) {
        if (cls === 'st-key-' + prefix || cls.startsWith('st-key-' + prefix + '-')) { return el; }
      }
    }
    return null;
  }
  document.addEventListener('keydown', function (event) {
    if (ignored(event)) { return; }
    const action = map[event.key.toLowerCase()];
    if (!action) { return; }
    const el = keyed(action[1]);
    if (!el) { return; }
    if (action[0] === 'click') {
      const button = el.querySelector('button');
      if (button && !button.disabled) { event.preventDefault(); button.click(); }
    } else {
      const options = el.querySelectorAll('input[type="radio"]');
      if (options[action[2]]) { event.preventDefault(); options[action[2]].click(); options[action[2]].blur(); }
    }
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
    """
    return script(SCRIPT, SHORTCUTS)


# --- Per-criterion verdicts (compare page) -----------------------------------------------------
# A second, separate script: the pair shortcuts above stay as they are (other pages reuse them), and
# these keys act only where criterion rows exist (widget keys "crit-<row>-<screen id>").

#: Key → ("verdict", option index of the row's radio: 0 A better, 1 B better, 2 tie) or ("move", ±1).
CRITERION_KEYS = {
    "z": ("verdict", 0),
    "x": ("verdict", 2),
    "c": ("verdict", 1),
    "j": ("move", 1),
    "k": ("move", -1),
}

CRITERIA_HELP = ("Criteria: the outlined row is the current one · **z** A better · **x** tie · **c** B better "
                 "(then the next row) · **j/k** next/previous row without judging")

CRITERIA_SCRIPT = """
<script>
(function () {
  if (window.__therapref_criteria_keys) { return; }
  window.__therapref_criteria_keys = true;
  const map = %MAP%;
%IGNORED%
  const pattern = new RegExp('^st-key-crit-([0-9]+)-(.+)$');
  let current = 0;
  let screen = null;
  function rows() {
    // Criterion radios carry the class "st-key-crit-ROW-SCREEN" (no angle brackets in this script:
    // the sanitizer drops scripts whose text contains tags).
    const found = [];
    for (const el of document.querySelectorAll('[class*="st-key-crit-"]')) {
      for (const cls of el.classList) {
        const m = pattern.exec(cls);
        if (m) { found.push({index: Number(m[1]), screen: m[2], el: el}); }
      }
    }
    found.sort(function (a, b) { return a.index - b.index; });
    return found;
  }
  function mark() {
    const all = rows();
    if (all.length && all[0].screen !== screen) { screen = all[0].screen; current = 0; }
    current = Math.min(current, Math.max(0, all.length - 1));
    all.forEach(function (row, i) {
      row.el.style.outline = i === current ? '2px solid #ff4b4b' : '';
      row.el.style.outlineOffset = i === current ? '3px' : '';
      row.el.dataset.current = i === current ? 'true' : 'false';
    });
    return all;
  }
  setInterval(mark, 300);  // the fragment redraws rows after each judgment
  document.addEventListener('keydown', function (event) {
    if (ignored(event)) { return; }
    const action = map[event.key.toLowerCase()];
    if (!action) { return; }
    const all = mark();
    if (!all.length) { return; }
    event.preventDefault();
    if (action[0] === 'move') {
      current = Math.min(all.length - 1, Math.max(0, current + action[1]));
    } else {
      const options = all[current].el.querySelectorAll('input[type="radio"]');
      if (options[action[1]]) { options[action[1]].click(); options[action[1]].blur(); }
      current = Math.min(all.length - 1, current + 1);
    }
    mark();
  });
})();
</script>
"""


def criteria_script() -> str:
    """The ``<script>`` of the criterion keys, for ``st.html(..., unsafe_allow_javascript=True)``;
    like :func:`shortcut_script`, static and free of angle brackets inside:

    >>> body = criteria_script().split("<script>")[1].split("</script>")[0]
    >>> "<" in body or ">" in body
    False
    >>> set(CRITERION_KEYS) & set(SHORTCUTS)
    set()
    """
    return script(CRITERIA_SCRIPT, CRITERION_KEYS)
