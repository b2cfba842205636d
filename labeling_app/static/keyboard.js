// Keyboard shortcuts of the labeling pages (compare, rank): one static script, never any untrusted
// text. labeling_app/keyboard.py inlines this file and calls theraprefKeys(config) with the page's
// key map; the compare and ranking pages differ only in that map.
//
// config = {
//   name: the page (one listener per page and window, however often the page reruns),
//   keys: {key: ['click', widget key] | ['radio', widget key, option index]},
//   rows: optional {prefix, keys: {key: ['verdict', option index] | ['move', +1 or -1]}}: rows of
//         radios keyed prefix-ROW-SCREEN (the compare page's criteria), the current one outlined.
// }
// Keys are event.key in lower case. A key counts only when no text field has the focus and no
// modifier is held. Widget containers carry the class "st-key-" + key, the key being the widget
// key itself or the widget key + "-" + the opaque screen id.
// No angle brackets anywhere in this file: Streamlit's sanitizer (DOMPurify) silently drops a script
// whose text looks like it holds a tag.
function theraprefKeys(config) {
  const flag = '__therapref_keys_' + config.name;
  if (window[flag]) { return; }
  window[flag] = true;

  function ignored(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) { return true; }
    const target = event.target;
    const tag = target && target.tagName ? target.tagName.toLowerCase() : '';
    return tag === 'textarea' || tag === 'select' || (target && target.isContentEditable) ||
      (tag === 'input' && !['radio', 'checkbox', 'button', 'submit'].includes((target.type || '').toLowerCase()));
  }

  function keyOf(event) { return (event.key || '').toLowerCase(); }

  function keyed(prefix) {
    for (const el of document.querySelectorAll('[class*="st-key-' + prefix + '"]')) {
      for (const cls of el.classList) {
        if (cls === 'st-key-' + prefix || cls.startsWith('st-key-' + prefix + '-')) { return el; }
      }
    }
    return null;
  }

  function choose(el, index) {
    const option = el.querySelectorAll('input[type="radio"]')[index];
    if (option) { option.click(); option.blur(); }
  }

  document.addEventListener('keydown', function (event) {
    if (ignored(event)) { return; }
    const action = config.keys[keyOf(event)];
    if (!action) { return; }
    const el = keyed(action[1]);
    if (!el) { return; }
    // Also keeps Enter from pressing whichever button has the focus, as well as this one.
    event.preventDefault();
    if (action[0] === 'click') {
      const button = el.querySelector('button');
      if (button && !button.disabled) { button.click(); }
    } else {
      choose(el, action[2]);
    }
  });

  if (!config.rows) { return; }
  const rowKeys = config.rows.keys;
  const pattern = new RegExp('^st-key-' + config.rows.prefix + '-([0-9]+)-(.+)$');
  let current = 0;
  let screen = null;
  function rows() {
    const found = [];
    for (const el of document.querySelectorAll('[class*="st-key-' + config.rows.prefix + '-"]')) {
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
  setInterval(mark, 300);  // the fragment redraws the rows after each judgment
  document.addEventListener('keydown', function (event) {
    if (ignored(event)) { return; }
    const action = rowKeys[keyOf(event)];
    if (!action) { return; }
    const all = mark();
    if (!all.length) { return; }
    event.preventDefault();
    if (action[0] === 'move') {
      current = Math.min(all.length - 1, Math.max(0, current + action[1]));
    } else {
      choose(all[current].el, action[1]);
      current = Math.min(all.length - 1, current + 1);
    }
    mark();
  });
}
