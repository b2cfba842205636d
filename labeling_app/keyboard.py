"""Keyboard shortcuts for the compare page: a small static script (never any untrusted text).

Keys: 1 A better, 2 B better, 3 tie, 4 both bad, q/w/e strength slightly/clearly/much, s skip, u undo.
Ignored while typing in a text field or with a modifier key held.
"""

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
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) { return; }
    const target = event.target;
    const tag = target && target.tagName ? target.tagName.toLowerCase() : '';
    const typing = tag === 'textarea' || tag === 'select' || (target && target.isContentEditable) ||
      (tag === 'input' && !['radio', 'checkbox', 'button', 'submit'].includes((target.type || '').toLowerCase()));
    if (typing) { return; }
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
    import json

    return SCRIPT.replace("%MAP%", json.dumps(SHORTCUTS))
