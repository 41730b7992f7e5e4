// The admin area (admin token, not an API key): queue and throughput charts, workers and
// engines, keys, maintenance and model switches, the callback outbox.
import { admin, explain, session } from "./api.js";
import { lineChart } from "./chart.js";
import { clearError, h, showError, when } from "./dom.js";

let timer = null;

export function leave() {
  clearInterval(timer);
  timer = null;
}

function table(headers, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, ...headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, ...rows.map((cells) => h("tr", {}, ...cells.map((c) => h("td", {}, c))))));
}

// Runs an admin action; a refusal shows next to the control that caused it.
async function act(control, action) {
  clearError();
  control.disabled = true;
  try {
    return await action();
  } catch (error) {
    showError(explain(error), control);
    return undefined;
  } finally {
    control.disabled = false;
  }
}

function signInForm(main, onDone) {
  const input = h("input", { id: "admin-token", type: "password", autocomplete: "off", spellcheck: false, required: true });
  const button = h("button", { type: "submit" }, "Open admin");
  const form = h("form", { class: "inline" }, h("label", { for: "admin-token" }, "Admin token"), input, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    session.admin = input.value.trim();
    const ok = await act(button, () => admin("/api/v1/admin/switches"));
    if (ok) onDone();
    else session.admin = "";
  });
  main.append(h("p", {}, "The admin area needs the admin token (SEEDBED_ADMIN_TOKEN, or one from ", h("code", {}, "seedbed admin token"), ")."), form);
  input.focus();
}

export async function enter(main) {
  main.append(h("h1", {}, "Admin"));
  if (!session.admin) {
    signInForm(main, () => { main.replaceChildren(); enter(main); });
    return;
  }
  const overview = h("section", { "aria-labelledby": "h-queue" });
  const workers = h("section", { "aria-labelledby": "h-workers" });
  const switches = h("section", { "aria-labelledby": "h-switches" });
  const keys = h("section", { "aria-labelledby": "h-keys" });
  const callbacks = h("section", { "aria-labelledby": "h-callbacks" });
  main.append(overview, workers, switches, keys, callbacks);

  async function drawOverview() {
    const data = await admin("/api/v1/admin/overview");
    const depth = data.samples.map((s) => ({ x: s.time, y: s.depth }));
    const rate = data.samples.map((s) => ({ x: s.time, y: s.finishedPerMinute }));
    overview.replaceChildren(h("h2", { id: "h-queue" }, "Queue"),
      h("div", { class: "charts" },
        h("figure", {}, lineChart({ title: "Queue depth over time", points: depth }), h("figcaption", {}, "Queue depth (waiting and queuing tasks)")),
        h("figure", {}, lineChart({ title: "Throughput over time", points: rate, unit: "/min" }), h("figcaption", {}, "Tasks ended per minute (this process)"))),
      table(["Model", "Waiting", "Oldest"], data.queue.map((q) => [q.model, q.depth, when(q.oldestCreateTime)])),
      h("p", { class: "muted" }, `Open: ${JSON.stringify(data.openByState)} · ended in the last hour: ${JSON.stringify(data.finishedLastHour)}`));
  }

  async function drawWorkers() {
    const data = await admin("/api/v1/admin/workers");
    workers.replaceChildren(h("h2", { id: "h-workers" }, "Workers"),
      table(["Worker", "State", "Current tasks"], data.workers.map((w) => [
        `${w.id}${w.inThisProcess ? " (this server)" : ""}`, w.state,
        w.tasks.map((t) => `${t.taskId.slice(0, 8)} ${t.model} ${t.state} ${t.progress}%${t.engine ? ` on ${t.engine}` : ""}`).join("; ") || "—"])),
      h("h3", {}, "Engines of this server"),
      table(["Engine", "Kind", "Models"], data.engines.map((e) => [e.name, e.kind, e.models.length > 4 ? `${e.models.length} models` : e.models.join(", ")])));
  }

  async function drawSwitches(given) {
    const data = given || await admin("/api/v1/admin/switches");
    const maintenance = h("input", { id: "maintenance", type: "checkbox", checked: data.maintenance });
    maintenance.addEventListener("change", async () => {
      const next = await act(maintenance, () => admin("/api/v1/admin/maintenance", { method: "PUT", body: { on: maintenance.checked } }));
      if (next) drawSwitches(next);
    });
    switches.replaceChildren(h("h2", { id: "h-switches" }, "Switches"),
      h("p", {}, maintenance, h("label", { for: "maintenance" }, " Maintenance (createTask answers 455)")),
      h("ul", { class: "switches" }, ...data.models.map((m) => {
        const id = `switch-${m.id.replace(/[^a-z0-9]/gi, "-")}`;
        const box = h("input", { id, type: "checkbox", checked: m.enabled, dataset: { model: m.id } });
        box.addEventListener("change", async () => {
          const next = await act(box, () => admin("/api/v1/admin/models", { method: "PUT", body: { model: m.id, enabled: box.checked } }));
          if (next) drawSwitches(next);
        });
        return h("li", {}, box, h("label", { for: id }, ` ${m.id}${m.served ? "" : " (no engine)"}`));
      })));
  }

  async function drawKeys() {
    const list = await admin("/api/v1/admin/keys");
    const name = h("input", { id: "new-key-name", required: true });
    const credits = h("input", { id: "new-key-credits", type: "number", min: 0, step: "any", value: "100" });
    const cap = h("input", { id: "new-key-cap", type: "number", min: 1, step: 1, placeholder: "default" });
    const create = h("button", { type: "submit" }, "Create key");
    const shown = h("p", { class: "secret", "aria-live": "polite" });
    const form = h("form", { class: "inline" },
      h("label", { for: "new-key-name" }, "Name"), name, h("label", { for: "new-key-credits" }, "Credits"), credits,
      h("label", { for: "new-key-cap" }, "Open tasks at most"), cap, create);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const limits = cap.value ? { openTaskCap: Number(cap.value) } : {};
      const made = await act(create, () => admin("/api/v1/admin/keys", { method: "POST", body: { name: name.value, credits: credits.value || 0, limits } }));
      if (made) {
        await drawKeys();
        keys.querySelector(".secret").textContent = `New key (shown once): ${made.key}`;
      }
    });
    const rows = list.map((k) => {
      const amount = h("input", { type: "number", step: "any", "aria-label": `Credits to add to ${k.name}`, class: "narrow" });
      const add = h("button", { type: "button" }, "Add");
      add.addEventListener("click", async () => {
        if (amount.value && await act(add, () => admin(`/api/v1/admin/keys/${k.id}/credits`, { method: "POST", body: { amount: amount.value } }))) drawKeys();
      });
      const revoke = h("button", { type: "button", disabled: Boolean(k.revokedAt) }, k.revokedAt ? "Revoked" : "Revoke");
      revoke.addEventListener("click", async () => {
        if (confirm(`Revoke ${k.name} (${k.id})?`) && await act(revoke, () => admin(`/api/v1/admin/keys/${k.id}/revoke`, { method: "POST" }))) drawKeys();
      });
      const limit = h("input", { type: "number", min: 1, step: 1, value: k.limits.openTaskCap ?? "", placeholder: "default", "aria-label": `Open tasks at most for ${k.name}`, class: "narrow" });
      const save = h("button", { type: "button" }, "Set");
      save.addEventListener("click", async () => {
        const limits = { ...k.limits, openTaskCap: limit.value ? Number(limit.value) : null };
        if (await act(save, () => admin(`/api/v1/admin/keys/${k.id}/limits`, { method: "PUT", body: limits }))) drawKeys();
      });
      return [k.id, k.name, k.balance, k.held, k.openTasks, h("span", {}, limit, save), h("span", {}, amount, add), revoke];
    });
    keys.replaceChildren(h("h2", { id: "h-keys" }, "Keys"), form, shown,
      table(["Id", "Name", "Balance", "Held", "Open", "Open-task cap", "Credits", ""], rows));
  }

  async function drawCallbacks() {
    const dead = callbacks.querySelector("#dead-only")?.checked ?? true;
    const rows = await admin("/api/v1/admin/callbacks", { query: { state: dead ? "dead" : "" } });
    const only = h("input", { id: "dead-only", type: "checkbox", checked: dead, onchange: () => drawCallbacks() });
    callbacks.replaceChildren(h("h2", { id: "h-callbacks" }, "Callbacks"),
      h("p", {}, only, h("label", { for: "dead-only" }, " Dead letters only")),
      rows.length ? table(["Task", "State", "Attempts", "Last answer", "URL", ""], rows.map((c) => {
        const again = h("button", { type: "button" }, "Redeliver");
        again.addEventListener("click", async () => {
          if (await act(again, () => admin(`/api/v1/admin/callbacks/${c.taskId}/redeliver`, { method: "POST" }))) drawCallbacks();
        });
        return [c.taskId, c.state, c.attempts, c.lastStatus ?? c.lastError ?? "", c.url, again];
      })) : h("p", { class: "muted" }, dead ? "No dead letters." : "The outbox is empty."));
  }

  try {
    await Promise.all([drawOverview(), drawWorkers(), drawSwitches(), drawKeys(), drawCallbacks()]);
  } catch (error) {
    if (error.code === 401) session.admin = "";
    throw error;
  }
  timer = setInterval(() => {
    Promise.all([drawOverview(), drawWorkers()]).catch((error) => showError(explain(error), overview));
  }, 5000);
}
