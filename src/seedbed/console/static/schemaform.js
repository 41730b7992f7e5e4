// A form drawn from a model's input JSON Schema (GET /api/v1/models): enums as choices,
// defaults filled in, limits shown, the prompt with a character count against its limit.
import { h } from "./dom.js";

// anyOf [X, null] is an optional X
function plain(schema) {
  if (!schema.anyOf) return { ...schema, nullable: false };
  const kinds = schema.anyOf.filter((one) => one.type !== "null");
  return { ...schema, ...(kinds[0] || {}), nullable: kinds.length < schema.anyOf.length };
}

function limits(s) {
  const parts = [];
  if (s.minimum !== undefined) parts.push(`min ${s.minimum}`);
  if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
  if (s.maximum !== undefined) parts.push(`max ${s.maximum}`);
  if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  return parts.join(", ");
}

// Returns { element, read(), fill(input) }; read() gives the input object to send.
export function schemaForm(schema, { skip = [] } = {}) {
  const fields = [];
  const box = h("div", { class: "fields" });
  const required = new Set(schema.required || []);
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    if (skip.includes(name)) continue;
    const s = plain(raw);
    const id = `field-${name}`;
    const title = s.title || name;
    const hint = [s.description, limits(s)].filter(Boolean).join(" ");
    let control;
    let read;
    let fill;
    if (s.enum) {
      control = h("select", { id, name });
      if (s.nullable && s.default === undefined) control.append(h("option", { value: "" }, "(server default)"));
      for (const value of s.enum) control.append(h("option", { value: String(value) }, String(value)));
      if (s.default !== undefined && s.default !== null) control.value = String(s.default);
      read = () => control.value || undefined;
      fill = (v) => { control.value = v ?? ""; };
    } else if (s.type === "boolean") {
      control = h("input", { id, name, type: "checkbox", checked: s.default === true });
      read = () => (control.checked ? true : s.nullable ? undefined : false);
      fill = (v) => { control.checked = v === true; };
    } else if (s.type === "integer" || s.type === "number") {
      control = h("input", {
        id, name, type: "number", inputMode: s.type === "integer" ? "numeric" : "decimal",
        step: s.type === "integer" ? "1" : "any",
        min: s.minimum ?? s.exclusiveMinimum, max: s.maximum ?? s.exclusiveMaximum,
      });
      if (s.default !== undefined && s.default !== null) control.value = String(s.default);
      else control.placeholder = "random / server default";
      read = () => (control.value === "" ? undefined : Number(control.value));
      fill = (v) => { control.value = v ?? ""; };
    } else if (s.type === "string") {
      const long = name === "prompt";
      control = h(long ? "textarea" : "input", {
        id, name, rows: long ? 4 : undefined, maxLength: s.maxLength, required: required.has(name),
      });
      if (s.default) control.value = s.default;
      read = () => (control.value === "" && !required.has(name) ? undefined : control.value);
      fill = (v) => { control.value = v ?? ""; control.dispatchEvent(new Event("input")); };
      if (long) control.dataset.testid = "prompt";
    } else {
      continue; // arrays and objects other than images: not offered by the catalogue
    }
    const label = h("label", { for: id }, title, required.has(name) ? h("span", { class: "req", title: "required" }, " *") : "");
    const row = h("div", { class: `field field-${s.type}` }, label, control);
    if (s.maxLength && control.tagName === "TEXTAREA") {
      const count = h("span", { class: "count", id: `${id}-count`, "aria-live": "polite" });
      const update = () => {
        count.textContent = `${control.value.length} / ${s.maxLength}`;
        count.classList.toggle("over", control.value.length > s.maxLength);
      };
      control.addEventListener("input", update);
      update();
      row.append(count);
    }
    if (hint) {
      const help = h("small", { id: `${id}-help`, class: "help" }, hint);
      control.setAttribute("aria-describedby", help.id);
      row.append(help);
    }
    box.append(row);
    fields.push({ name, read, fill });
  }
  return {
    element: box,
    read() {
      const input = {};
      for (const field of fields) {
        const value = field.read();
        if (value !== undefined) input[field.name] = value;
      }
      return input;
    },
    fill(input) {
      for (const field of fields) if (field.name in input) field.fill(input[field.name]);
    },
  };
}
