// The gallery: the key's tasks newest first, a page at a time as the list scrolls, with
// small thumbnails (never the full-size results); open one for its details; run it again.
import { call, explain, session } from "./api.js";
import { clearError, h, seconds, showError, when } from "./dom.js";

const STATES = ["waiting", "queuing", "generating", "success", "fail"];
let observer = null;

export function leave() {
  if (observer) observer.disconnect();
  observer = null;
}

function inputOf(task) {
  const param = JSON.parse(task.param || "{}");
  return typeof param.input === "string" ? JSON.parse(param.input) : param.input || {};
}

export async function enter(main, params) {
  main.append(h("h1", {}, "Gallery"));
  if (!session.key) {
    const hint = h("p", {}, "Sign in with an API key to see its tasks.");
    main.append(hint);
    return;
  }
  const models = await call("/api/v1/models", { token: "" });
  const model = h("select", { id: "filter-model" }, h("option", { value: "" }, "All models"),
    ...models.map((m) => h("option", { value: m.id }, m.title || m.id)));
  const state = h("select", { id: "filter-state" }, h("option", { value: "" }, "All states"),
    ...STATES.map((s) => h("option", { value: s }, s)));
  model.value = params.get("model") || "";
  state.value = params.get("state") || "";
  const grid = h("ul", { class: "gallery", "aria-label": "Tasks" });
  const more = h("button", { type: "button", class: "more" }, "Load more");
  const details = h("dialog", { class: "details", "aria-label": "Task details" });
  main.append(h("form", { class: "filters", role: "search" },
    h("label", { for: "filter-model" }, "Model"), model,
    h("label", { for: "filter-state" }, "State"), state), grid, more, details);

  let cursor = null;
  let loading = false;

  async function load(reset) {
    if (loading) return;
    loading = true;
    clearError();
    if (reset) {
      grid.replaceChildren();
      cursor = null;
    }
    try {
      const page = await call("/api/v1/console/tasks", { query: { model: model.value, state: state.value, cursor, limit: 40 } });
      grid.append(...page.tasks.map(item));
      cursor = page.nextCursor;
      more.hidden = !cursor;
      if (!grid.children.length) grid.append(h("li", { class: "empty" }, "No tasks yet: make one in the playground."));
    } catch (error) {
      showError(explain(error), grid);
    } finally {
      loading = false;
    }
  }

  function item(task) {
    const thumb = task.thumbnailUrls[0]
      ? h("img", { src: task.thumbnailUrls[0], alt: `Thumbnail of task ${task.taskId}`, loading: "lazy", decoding: "async", width: 256, height: 256 })
      : h("div", { class: `placeholder state-${task.state}`, "aria-hidden": "true" }, task.state);
    const open = h("button", { type: "button", class: "card", "aria-label": `Open task ${task.taskId}`, onclick: () => show(task) },
      thumb,
      h("span", { class: `badge state-${task.state}` }, task.state),
      h("span", { class: "model" }, task.model),
      h("span", { class: "muted" }, `${task.creditsConsumed} credits · ${seconds(task.costTime) || "…"} · ${when(task.createTime)}`));
    return h("li", { dataset: { testid: "gallery-item", taskId: task.taskId } }, open);
  }

  function show(task) {
    const input = inputOf(task);
    const again = h("button", { type: "button", class: "primary", dataset: { testid: "run-again" } }, "Run again");
    again.addEventListener("click", async () => {
      clearError();
      again.disabled = true;
      try {
        const created = await call("/api/v1/jobs/createTask", { method: "POST", body: { model: task.model, input } });
        details.close();
        history.pushState(null, "", `/?task=${created.taskId}`);
        window.dispatchEvent(new PopStateEvent("popstate"));
      } catch (error) {
        showError(explain(error), again);
      } finally {
        again.disabled = false;
      }
    });
    details.replaceChildren(
      h("h2", {}, task.model),
      h("p", { class: "muted" }, `Task ${task.taskId} · ${task.state} · ${task.creditsConsumed} credits · ${seconds(task.costTime)} · ${when(task.createTime)}`),
      task.failCode ? h("p", { class: "error-text" }, `Failed (${task.failCode}): ${task.failMsg || ""}`) : "",
      ...task.resultUrls.map((url, index) => h("figure", {}, h("a", { href: url, target: "_blank", rel: "noopener" },
        h("img", { src: task.thumbnailUrls[index], alt: `Result ${index + 1}`, loading: "lazy" })),
      h("figcaption", {}, h("a", { href: url, download: "" }, "Download full size")))),
      h("h3", {}, "Input"),
      h("pre", { tabIndex: 0 }, JSON.stringify(input, null, 2)),
      h("div", { class: "actions" }, again, h("button", { type: "button", onclick: () => details.close() }, "Close")));
    details.showModal();
  }

  const reload = () => {
    const query = new URLSearchParams({ ...(model.value && { model: model.value }), ...(state.value && { state: state.value }) });
    history.replaceState(null, "", `/gallery${query.size ? `?${query}` : ""}`);
    load(true);
  };
  model.addEventListener("change", reload);
  state.addEventListener("change", reload);
  more.addEventListener("click", () => load(false));
  observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && cursor) load(false);
  }, { rootMargin: "600px" });
  observer.observe(more);
  await load(true);
}
