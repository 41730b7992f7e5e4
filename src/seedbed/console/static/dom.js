// Small DOM helpers: elements are built with properties, never with HTML strings, so nothing
// a server or a user wrote can become markup.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Kept by reference: moved next to its cause, it may be detached when that part is redrawn.
let box = null;
const errorBox = () => (box ||= document.getElementById("error"));

// One error element for the page: shown right after what caused it.
export function showError(message, near) {
  const el = errorBox();
  el.textContent = message;
  el.hidden = false;
  if (near && near.isConnected) near.after(el);
  else if (!el.isConnected) document.getElementById("main").append(el);
}

export function clearError() {
  const el = errorBox();
  el.hidden = true;
  el.textContent = "";
}

export function parkError() {
  // back to the body, hidden, whenever a view is replaced
  clearError();
  document.body.append(errorBox());
}

export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

export function seconds(value) {
  return value === null || value === undefined ? "" : `${value} s`;
}
