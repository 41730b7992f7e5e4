// The playground: pick a model, fill its form, add reference images, Generate; the task's
// state and progress live from the events stream; the result at full size; the same request
// as curl and as Python to copy.
import { ApiError, call, explain, follow, session, upload } from "./api.js";
import { clearError, h, showError } from "./dom.js";
import { schemaForm } from "./schemaform.js";

const MIME = { JPEG: ["image/jpeg"], PNG: ["image/png"], WEBP: ["image/webp"], GIF: ["image/gif"], BMP: ["image/bmp"], TIFF: ["image/tiff"] };
let abort = null;

export function leave() {
  if (abort) abort.abort();
  abort = null;
}

function mb(bytes) {
  return `${(bytes / 1048576).toFixed(bytes < 1048576 ? 2 : 0)} MB`;
}

function imagePicker(rule, onChange) {
  const urls = [];
  const accept = [...new Set(rule.formats.flatMap((f) => MIME[f] || []))].join(",");
  const list = h("ul", { class: "thumbs", "aria-label": "Reference images" });
  const input = h("input", { id: "images", type: "file", accept, multiple: rule.maxItems > 1, class: "visually-hidden" });
  const zone = h("div", { class: "dropzone", dataset: { testid: "dropzone" } },
    h("label", { for: "images" }, `Reference images: drop ${rule.maxItems > 1 ? `up to ${rule.maxItems}` : "one"} here or `,
      h("span", { class: "linkish" }, "choose a file"), ` (${rule.formats.join(", ")}; at most ${mb(rule.maxBytes)} each)`),
    input, list);

  function redraw() {
    list.replaceChildren(...urls.map((url, index) => h("li", {},
      h("img", { src: url, alt: `Reference image ${index + 1}`, width: 64, height: 64 }),
      h("button", { type: "button", "aria-label": `Remove reference image ${index + 1}`, onclick: () => { urls.splice(index, 1); redraw(); } }, "×"))));
    onChange(urls);
  }

  async function add(files) {
    clearError();
    for (const file of files) {
      const name = file.name || "the file";
      if (urls.length >= rule.maxItems) {
        showError(`At most ${rule.maxItems} reference image${rule.maxItems > 1 ? "s" : ""} for this model.`, zone);
        return;
      }
      const formats = rule.formats.filter((f) => (MIME[f] || []).includes(file.type));
      if (!formats.length) {
        showError(`${name} is not an image this model accepts (${rule.formats.join(", ")}).`, zone);
        return;
      }
      if (file.size > rule.maxBytes) {
        showError(`${name} is too large: ${mb(file.size)}, the limit is ${mb(rule.maxBytes)}.`, zone);
        return;
      }
      zone.classList.add("busy");
      try {
        const stored = await upload(file);
        urls.push(stored.downloadUrl);
        redraw();
      } catch (error) {
        showError(`Could not upload ${name}: ${explain(error)}`, zone);
        return;
      } finally {
        zone.classList.remove("busy");
      }
    }
  }

  input.addEventListener("change", () => { add([...input.files]); input.value = ""; });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    add([...event.dataTransfer.files]);
  });
  return { element: zone, urls, set(list) { urls.splice(0, urls.length, ...list); redraw(); } };
}

function snippets(body) {
  const curl = `curl -X POST ${location.origin}/api/v1/jobs/createTask \\\n  -H "Authorization: Bearer $SEEDBED_API_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '${JSON.stringify(body).replaceAll("'", "'\\''")}'`;
  const py = `from seedbed.client import Client\n\n# SEEDBED_API_KEY in the environment\nclient = Client(base_url="${location.origin}")\ntask_id = client.create_task(\n    ${JSON.stringify(body.model)},\n    ${pyLiteral(body.input, 4)},\n)\nprint(client.wait(task_id).result_urls)`;
  const block = (title, text) => {
    const code = h("code", {}, text);
    const button = h("button", { type: "button", onclick: async () => {
      try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; } catch { button.textContent = "Select and copy"; }
    } }, `Copy ${title}`);
    return h("details", { class: "snippet" }, h("summary", {}, title), h("pre", { tabIndex: 0 }, code), button);
  };
  return [block("curl", curl), block("Python", py)];
}

function pyLiteral(value, indent) {
  const pad = " ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return `[${value.map((v) => pyLiteral(v, indent)).join(", ")}]`;
  if (typeof value === "object") {
    const items = Object.entries(value).map(([k, v]) => `${pad}    ${JSON.stringify(k)}: ${pyLiteral(v, indent + 4)},`);
    return `{\n${items.join("\n")}\n${pad}}`;
  }
  return JSON.stringify(value);
}

export async function enter(main, params) {
  const models = await call("/api/v1/models", { token: "" });
  const rerun = params.get("task");
  const select = h("select", { id: "model", dataset: { testid: "model" } });
  for (const model of models) {
    select.append(h("option", { value: model.id }, model.served ? model.title || model.id : `${model.title || model.id} (unavailable)`));
  }
  const notice = h("p", { class: "notice", hidden: true });
  const formBox = h("div");
  const generate = h("button", { type: "submit", class: "primary", dataset: { testid: "generate" } }, "Generate");
  const status = h("div", { class: "status", "aria-live": "polite" });
  const result = h("section", { class: "result", "aria-label": "Result" });
  const code = h("section", { class: "code", "aria-label": "The same request" });
  const form = h("form", { class: "playground", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "model" }, "Model"), select), notice, formBox,
    h("div", { class: "actions" }, generate));
  main.append(h("h1", {}, "Playground"), h("div", { class: "columns" }, form, h("div", { class: "output" }, status, result, code)));

  let fields = null;
  let picker = null;
  let spec = null;

  function body() {
    const input = fields.read();
    if (picker) input[spec.inputImages.field] = spec.inputImages.maxItems === 1 && spec.inputImages.field === "image_url" ? picker.urls[0] : [...picker.urls];
    return { model: spec.id, input };
  }

  function refreshCode() {
    if (spec) code.replaceChildren(...snippets(body()));
  }

  function choose(id) {
    spec = models.find((m) => m.id === id) || models[0];
    select.value = spec.id;
    fields = schemaForm(spec.inputSchema, { skip: spec.inputImages ? [spec.inputImages.field] : [] });
    picker = spec.inputImages ? imagePicker(spec.inputImages, refreshCode) : null;
    formBox.replaceChildren(fields.element, picker ? picker.element : "");
    const unavailable = !spec.served;
    notice.hidden = !unavailable;
    notice.textContent = unavailable ? `${spec.title || spec.id} is unavailable on this server${spec.enabled ? " (no engine serves it)" : ": an operator disabled it"}.` : "";
    generate.disabled = unavailable;
    clearError();
    refreshCode();
  }

  select.addEventListener("change", () => choose(select.value));
  form.addEventListener("input", refreshCode);
  choose(models.find((m) => m.served)?.id || models[0].id);

  function showTask(data) {
    const bar = h("progress", { max: 100, value: data.progress || 0, "aria-label": "Progress" });
    const where = data.queuePosition ? ` · ${data.queuePosition} ahead in the queue` : "";
    status.replaceChildren(h("p", { class: `state state-${data.state}`, dataset: { testid: "state" } },
      `${data.state}`, h("span", { dataset: { testid: "progress" } }, ` ${data.progress || 0}%`), where), bar);
    if (data.state === "success") {
      const urls = JSON.parse(data.resultJson || "{}").resultUrls || [];
      result.replaceChildren(...urls.map((url, index) => {
        const meta = h("figcaption", {});
        const img = h("img", { src: url, alt: `Result ${index + 1} of ${spec.title || data.model}`, dataset: { testid: "result-image" } });
        img.addEventListener("load", () => {
          meta.replaceChildren(`${img.naturalWidth}×${img.naturalHeight} px · ${data.creditsConsumed} credits · ${data.costTime ?? 0} s `,
            h("a", { href: url, download: "", class: "button" }, "Download"));
          meta.dataset.testid = "result-meta";
        });
        return h("figure", {}, img, meta);
      }));
    } else if (data.state === "fail") {
      result.replaceChildren();
      showError(`The task failed (${data.failCode || "?"}): ${data.failMsg || "no reason given"}`, status);
    }
  }

  async function watch(taskId) {
    leave();
    abort = new AbortController();
    try {
      await follow(taskId, (kind, data) => showTask(data), abort.signal);
    } catch (error) {
      showError(explain(error), status);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    if (!session.key) {
      showError("Sign in with an API key first (top of the page).", generate);
      document.getElementById("api-key").focus();
      return;
    }
    if (picker && !picker.urls.length) {
      showError("Add at least one reference image for this model.", picker.element);
      return;
    }
    const prompt = form.querySelector("[data-testid=prompt]");
    if (prompt && prompt.required && !prompt.value.trim()) {
      showError("Write a prompt first.", prompt.parentElement);
      prompt.focus();
      return;
    }
    generate.disabled = true;
    result.replaceChildren();
    status.replaceChildren(h("p", { class: "state" }, "Sending…"));
    try {
      const created = await call("/api/v1/jobs/createTask", { method: "POST", body: body() });
      history.replaceState(null, "", `/?task=${created.taskId}`);
      await watch(created.taskId);
    } catch (error) {
      status.replaceChildren();
      showError(explain(error), generate);
      if (error instanceof ApiError && error.code === 401) document.dispatchEvent(new Event("seedbed:signed-out"));
    } finally {
      generate.disabled = !spec.served;
    }
  });

  if (rerun && session.key) {
    try {
      const record = await call("/api/v1/jobs/recordInfo", { query: { taskId: rerun } });
      const param = JSON.parse(record.param || "{}");
      const input = typeof param.input === "string" ? JSON.parse(param.input) : param.input || {};
      choose(record.model);
      fields.fill(input);
      if (picker) picker.set([].concat(input[spec.inputImages.field] || []));
      refreshCode();
      showTask(record);
      if (record.state !== "success" && record.state !== "fail") watch(rerun);
    } catch (error) {
      showError(explain(error), status);
    }
  }
}
