// The console's entry: navigation between pages without reloads, and signing in.
import { call, explain, session } from "./api.js";
import { clearError, h, parkError, showError } from "./dom.js";

const PAGES = {
  "/": () => import("./playground.js"),
  "/gallery": () => import("./gallery.js"),
  "/account": () => import("./account.js"),
  "/admin": () => import("./admin.js"),
};

let current = null;

let rendering = 0;

async function render() {
  const path = PAGES[location.pathname] ? location.pathname : "/";
  for (const link of document.querySelectorAll("nav a")) {
    const here = link.getAttribute("href") === path;
    here ? link.setAttribute("aria-current", "page") : link.removeAttribute("aria-current");
  }
  if (current && current.leave) current.leave();
  parkError();
  // Each render draws into a view of its own: one overtaken by a newer render (a sign-in
  // while the page still loads) finishes into a detached element, never beside the new one.
  const turn = ++rendering;
  const view = h("div", { class: "view" }, h("p", { class: "muted" }, "Loading…"));
  document.getElementById("main").replaceChildren(view);
  const module = await PAGES[path]();
  if (turn !== rendering) return;
  current = module;
  view.replaceChildren();
  try {
    await module.enter(view, new URLSearchParams(location.search));
  } catch (error) {
    if (turn === rendering) showError(explain(error), view.lastElementChild || view);
  }
}

export function go(path) {
  history.pushState(null, "", path);
  render();
}

function signedIn(ok) {
  document.getElementById("signed-in").hidden = !ok;
  document.getElementById("signed-in").textContent = ok ? "Signed in" : "";
  document.getElementById("signout").hidden = !ok;
  for (const el of document.querySelectorAll("#signin label, #signin input, #signin button[type=submit]")) {
    el.hidden = ok;
  }
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("api-key");
  const key = input.value.trim();
  if (!key) return;
  clearError();
  try {
    await call("/api/v1/chat/credit", { token: key }); // refused here if the key is not valid
    session.key = key;
    input.value = "";
    signedIn(true);
    render();
  } catch (error) {
    showError(explain(error), document.getElementById("signin"));
  }
}

function init() {
  document.getElementById("signin").addEventListener("submit", signIn);
  document.getElementById("signout").addEventListener("click", () => {
    session.key = "";
    session.admin = "";
    signedIn(false);
    render();
  });
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='/']");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    if (!PAGES[new URL(link.href).pathname]) return;
    event.preventDefault();
    go(link.getAttribute("href"));
    document.getElementById("main").focus();
  });
  window.addEventListener("popstate", render);
  document.addEventListener("seedbed:signed-out", () => signedIn(false));
  signedIn(Boolean(session.key));
  render();
}

init();
