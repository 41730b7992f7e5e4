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

const errorBox = () => document.getElementById("error");

// One error element for the page: shown right after what caused it.
export function showError(message, near) {
  const box = errorBox();
  box.textContent = message;
  box.hidden = false;
  if (near && near.isConnected) near.after(box);
}

export function clearError() {
  const box = errorBox();
  box.hidden = true;
  box.textContent = "";
}

export function parkError() {
  // back to the body before a view is replaced, so the element survives
  const box = errorBox();
  clearError();
  document.body.append(box);
}

export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

export function seconds(value) {
  return value === null || value === undefined ? "" : `${value} s`;
}
