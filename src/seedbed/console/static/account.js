// The account: the key's balance, and its tasks and credits by model and day as a chart.
import { call, session } from "./api.js";
import { barChart } from "./chart.js";
import { h } from "./dom.js";

export async function enter(main) {
  main.append(h("h1", {}, "Account"));
  if (!session.key) {
    main.append(h("p", {}, "Sign in with an API key to see its balance and usage."));
    return;
  }
  const [balance, usage] = await Promise.all([
    call("/api/v1/chat/credit"),
    call("/api/v1/console/usage", { query: { days: 30 } }),
  ]);
  main.append(h("p", { class: "balance" }, "Balance: ", h("strong", { dataset: { testid: "balance" } }, String(balance)), " credits"));
  const days = [...new Set(usage.rows.map((r) => r.day))].sort();
  const models = [...new Set(usage.rows.map((r) => r.model))].sort();
  const value = (day, model, field) => usage.rows.find((r) => r.day === day && r.model === model)?.[field] || 0;
  if (!days.length) {
    main.append(h("p", { class: "muted" }, `No tasks in the last ${usage.days} days.`));
    return;
  }
  const series = (field) => models.map((m) => ({ label: m, values: days.map((d) => value(d, m, field)) }));
  main.append(
    h("h2", {}, `Credits by model and day (last ${usage.days} days)`),
    barChart({ title: "Credits by model and day", xs: days.map((d) => d.slice(5)), series: series("credits") }),
    h("ul", { class: "legend" }, ...models.map((m, k) => h("li", { class: `key-${k % 6}` }, m))),
    h("h2", {}, "Tasks"),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Day"), h("th", { scope: "col" }, "Model"), h("th", { scope: "col" }, "Tasks"), h("th", { scope: "col" }, "Succeeded"), h("th", { scope: "col" }, "Credits"))),
      h("tbody", {}, ...usage.rows.slice().reverse().map((r) => h("tr", {}, h("td", {}, r.day), h("td", {}, r.model), h("td", {}, r.tasks), h("td", {}, r.succeeded), h("td", {}, r.credits))))),
  );
}
