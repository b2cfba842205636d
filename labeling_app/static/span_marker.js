// The span marker: a reply's text, shown inert, in which a clinician marks the words that make it
// unsafe, by mouse (select text, then a flag kind's button) or by keyboard (Tab to the text; arrows
// move by word, Shift+arrows extend, a flag kind's letter marks the selection, Delete removes the
// marks under it, Esc leaves). labeling_app/span_marker.py mounts it (Streamlit components v2).
//
// Untrusted text: every piece of the reply goes into the page through textContent, never innerHTML,
// and no attribute is ever built from it. Offsets leave this file as Python string offsets (code
// points), which is how the database stores them; JavaScript's own are UTF-16 units.
export default function (component) {
  const { parentElement, data, setStateValue } = component;
  const text = String(data.text || '');
  const kinds = data.flags || [];  // [[flag key, label, letter]]
  const byLetter = {};
  const labelOf = {};
  for (const [flag, label, letter] of kinds) { byLetter[letter] = flag; labelOf[flag] = label; }

  // Code point offset → UTF-16 offset, and back.
  const units = [0];
  for (const ch of Array.from(text)) { units.push(units[units.length - 1] + ch.length); }
  function toUnits(cp) { return units[Math.max(0, Math.min(cp, units.length - 1))]; }
  function toPoints(u) {
    let lo = 0, hi = units.length - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (units[mid] <= u) { lo = mid; } else { hi = mid - 1; } }
    return lo;
  }

  // Words (for the keyboard): [start, end) in UTF-16 units.
  const words = [];
  for (const m of text.matchAll(/\S+/g)) { words.push([m.index, m.index + m[0].length]); }

  let spans = (data.spans || []).filter(function (s) {
    return Number.isInteger(s.start) && Number.isInteger(s.end) && s.start < s.end && labelOf[s.flag];
  }).map(function (s) { return { start: s.start, end: s.end, flag: s.flag }; });
  let selection = null;  // {start, end} in code points
  let anchor = 0, focus = 0, keyboard = false;

  parentElement.replaceChildren();
  if (data.css) {  // the component's own style sheet (labeling_app/static/span_marker.css)
    const style = document.createElement('style');
    style.textContent = data.css;
    parentElement.appendChild(style);
  }
  const root = document.createElement('div');
  root.className = 'tp-span-marker';
  const body = document.createElement('div');
  body.className = 'tp-text';
  body.tabIndex = 0;
  body.setAttribute('role', 'textbox');
  body.setAttribute('aria-readonly', 'true');
  body.setAttribute('aria-label', 'Reply text: select words to mark them unsafe');
  const tools = document.createElement('div');
  tools.className = 'tp-tools';
  const status = document.createElement('span');
  status.className = 'tp-status';
  tools.appendChild(status);
  const buttons = {};
  for (const [flag, label, letter] of kinds) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'tp-flag';
    button.dataset.flag = flag;
    button.textContent = label + ' (' + letter + ')';
    button.addEventListener('mousedown', function (event) { event.preventDefault(); });  // keep the selection
    button.addEventListener('click', function () { mark(flag); });
    buttons[flag] = button;
    tools.appendChild(button);
  }
  const list = document.createElement('ul');
  list.className = 'tp-list';
  root.append(body, tools, list);
  parentElement.appendChild(root);

  function save() { setStateValue('spans', spans.slice()); }

  function mark(flag) {
    if (!selection || !labelOf[flag]) { return; }
    const exists = spans.some(function (s) {
      return s.start === selection.start && s.end === selection.end && s.flag === flag;
    });
    if (!exists) {
      spans.push({ start: selection.start, end: selection.end, flag: flag });
      spans.sort(function (a, b) { return a.start - b.start || a.end - b.end; });
      save();
    }
    if (!keyboard) { selection = null; const s = document.getSelection(); if (s) { s.removeAllRanges(); } }
    draw();
  }

  function removeAt(start, end) {
    const before = spans.length;
    spans = spans.filter(function (s) { return s.end <= start || s.start >= end; });
    if (spans.length !== before) { save(); }
    draw();
  }

  function keyboardSelection() {
    if (!words.length) { return null; }
    const a = words[Math.min(anchor, focus)], b = words[Math.max(anchor, focus)];
    return { start: toPoints(a[0]), end: toPoints(b[1]) };
  }

  function draw() {
    const cuts = new Set([0, text.length]);
    for (const s of spans) { cuts.add(toUnits(s.start)); cuts.add(toUnits(s.end)); }
    if (selection && keyboard) { cuts.add(toUnits(selection.start)); cuts.add(toUnits(selection.end)); }
    const points = Array.from(cuts).sort(function (a, b) { return a - b; });
    const pieces = [];
    for (let i = 0; i + 1 < points.length; i++) {
      const a = points[i], b = points[i + 1];
      if (a === b) { continue; }
      const from = toPoints(a), to = toPoints(b);
      const covering = spans.filter(function (s) { return s.start <= from && s.end >= to; });
      const selected = keyboard && selection && selection.start <= from && selection.end >= to;
      const piece = document.createElement(covering.length ? 'mark' : 'span');
      piece.textContent = text.slice(a, b);
      if (covering.length) {
        piece.className = 'tp-mark';
        piece.dataset.flags = covering.map(function (s) { return s.flag; }).join(' ');
        piece.title = covering.map(function (s) { return labelOf[s.flag]; }).join(', ');
      }
      if (selected) { piece.classList.add('tp-selected'); }
      pieces.push(piece);
    }
    body.replaceChildren.apply(body, pieces);
    const has = Boolean(selection);
    for (const flag in buttons) { buttons[flag].disabled = !has; }
    // The kinds appear only with a selection: an unmarked reply takes no more room than its text.
    tools.style.display = has ? '' : 'none';
    status.textContent = has ? 'Mark “' + quote(selection) + '” as:' : 'Select words, then a kind:';
    list.replaceChildren();
    spans.forEach(function (s) {
      const item = document.createElement('li');
      item.dataset.flag = s.flag;
      const words = document.createElement('span');
      words.className = 'tp-quote';
      words.textContent = '“' + quote(s) + '” — ' + labelOf[s.flag] + ' ';
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.className = 'tp-remove';
      remove.textContent = 'Remove';
      remove.setAttribute('aria-label', 'Remove the mark on “' + quote(s) + '”');
      remove.addEventListener('click', function () {
        spans = spans.filter(function (t) { return t !== s; });
        save();
        draw();
      });
      item.append(words, remove);
      list.appendChild(item);
    });
  }

  function quote(s) { return text.slice(toUnits(s.start), toUnits(s.end)); }

  // Mouse (or any native selection): offsets of the selection inside the text.
  function offsetOf(node, offset) {
    const before = document.createRange();
    before.setStart(body, 0);
    before.setEnd(node, offset);
    return before.toString().length;  // the text before the boundary, in UTF-16 units
  }
  function fromNative() {
    if (keyboard) { return; }
    const native = document.getSelection();
    if (!native || native.rangeCount === 0 || native.isCollapsed) { return; }
    const range = native.getRangeAt(0);
    if (!body.contains(range.startContainer) || !body.contains(range.endContainer)) { return; }
    let a = offsetOf(range.startContainer, range.startOffset), b = offsetOf(range.endContainer, range.endOffset);
    if (a > b) { const t = a; a = b; b = t; }
    while (a < b && /\s/.test(text[a])) { a++; }
    while (b > a && /\s/.test(text[b - 1])) { b--; }
    selection = a < b ? { start: toPoints(a), end: toPoints(b) } : null;
    draw();
    if (selection) {  // drawing replaced the text nodes: select the same characters again
      const s = document.getSelection();
      const r = document.createRange();
      const start = locate(toUnits(selection.start)), end = locate(toUnits(selection.end));
      if (s && start && end) { r.setStart(start[0], start[1]); r.setEnd(end[0], end[1]); s.removeAllRanges(); s.addRange(r); }
    }
  }
  function locate(u) {
    const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
    let total = 0, last = null;
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      if (u <= total + n.textContent.length) { return [n, u - total]; }
      total += n.textContent.length;
      last = n;
    }
    return last ? [last, last.textContent.length] : null;
  }
  body.addEventListener('mouseup', function () { setTimeout(fromNative, 0); });

  // Keyboard.
  let pointer = false;  // focus that comes with a mouse press is the mouse's, not the keyboard's
  body.addEventListener('focus', function () {
    if (pointer) { return; }
    keyboard = true;
    anchor = focus = 0;
    selection = keyboardSelection();
    draw();
  });
  body.addEventListener('blur', function () {
    if (keyboard) { keyboard = false; selection = null; draw(); }
  });
  body.addEventListener('mousedown', function () {
    pointer = true;
    if (keyboard) { keyboard = false; selection = null; draw(); }
  });
  function released() { pointer = false; }
  document.addEventListener('mouseup', released);
  body.addEventListener('keydown', function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.key === 'Tab') { return; }
    event.stopPropagation();  // the page's own shortcuts (1, 2, s…) wait while marking
    const key = (event.key || '').toLowerCase();
    if (!keyboard) { keyboard = true; anchor = focus = 0; }
    const last = Math.max(0, words.length - 1);
    if (key === 'arrowright' || key === 'arrowleft') {
      const step = key === 'arrowright' ? 1 : -1;
      focus = Math.max(0, Math.min(last, focus + step));
      if (!event.shiftKey) { anchor = focus; }
    } else if (key === 'home' || key === 'end') {
      focus = key === 'home' ? 0 : last;
      if (!event.shiftKey) { anchor = focus; }
    } else if (key === 'delete' || key === 'backspace') {
      const s = keyboardSelection();
      if (s) { removeAt(s.start, s.end); }
    } else if (key === 'escape') {
      body.blur();
      event.preventDefault();
      return;
    } else if (byLetter[key]) {
      selection = keyboardSelection();
      mark(byLetter[key]);
    } else {
      return;
    }
    event.preventDefault();
    selection = keyboardSelection();
    draw();
  });

  draw();
  if (data.spans === undefined || data.spans === null) { save(); }
  return function () { document.removeEventListener('mouseup', released); };
}
