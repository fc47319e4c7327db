// Building elements without innerHTML: every title and detail from the service is text.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function show(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
}

export function status(el, text, kind = "") {
  el.textContent = text;
  el.className = `status ${kind}`.trim();
}

// One movie: title, year, genres (what /movies returns; recommendations carry title only).
export function movieInfo(movie) {
  const title = movie.title || `movie ${movie.movie_id}`;
  const yearText = movie.year ? ` (${movie.year})` : "";
  const bare = movie.year ? title.replace(/\s*\([0-9]{4}\)\s*$/, "") : title;
  return h(
    "span",
    { class: "info" },
    h("span", { class: "title" }, bare),
    h("span", { class: "year" }, yearText),
    movie.genres && movie.genres.length
      ? h("span", { class: "genres" }, movie.genres.map((g) => h("span", { class: "genre" }, g)))
      : null,
  );
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

// Any JSON value as nested definition lists: the operator view shows fields it does not know.
export function kv(value) {
  if (value === null || value === undefined) return h("span", { class: "hint" }, "none");
  if (Array.isArray(value)) {
    if (!value.length) return h("span", { class: "hint" }, "none");
    if (value.every((v) => typeof v !== "object" || v === null)) return value.join(", ");
    return h("ol", {}, value.map((v) => h("li", {}, kv(v))));
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return h("span", { class: "hint" }, "none");
    return h("dl", { class: "kv" }, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, kv(v))]));
  }
  if (typeof value === "number") return String(Math.round(value * 1e5) / 1e5);
  return String(value);
}

export function table(el, headers, rows) {
  show(
    el,
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))),
  );
}

export function when(seconds) {
  if (seconds === null || seconds === undefined || seconds === "") return "";
  const ms = typeof seconds === "number" && seconds < 1e11 ? seconds * 1000 : seconds;
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? String(seconds) : date.toISOString().replace(".000Z", "Z");
}
