// "Try it": search the catalogue, pick movies, compare the four kinds side by side; or a known user.
import { api } from "./api.js";
import { h, movieInfo, show, status } from "./dom.js";

const ALL_KINDS = ["popularity", "itemcf", "als", "ncf"];
const K = 10;
const picked = new Map(); // movie_id -> {movie, rating}
const $ = (id) => document.getElementById(id);

export function initTry() {
  let timer = null;
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(timer);
    search();
  });
  $("q").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(search, 250);
  });
  $("recommend-btn").addEventListener("click", recommendPicked);
  $("clear-btn").addEventListener("click", () => {
    picked.clear();
    renderPicked();
  });
  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    showUser();
  });
  search();
}

// Typing searches after a pause and Enter searches at once: the same query is not fetched and
// drawn twice (a redraw would take the keyboard focus away), and a slower, older answer never
// replaces a newer one.
let shownQuery = null;
let searchSeq = 0;

async function search() {
  const q = $("q").value.trim();
  if (q === shownQuery) return;
  shownQuery = q;
  const mine = ++searchSeq;
  const out = $("search-results");
  try {
    const data = await api(`/movies?limit=10&q=${encodeURIComponent(q)}`);
    if (mine !== searchSeq) return;
    status($("search-status"), data.movies.length
      ? `${data.movies.length} ${data.movies.length === 1 ? "movie" : "movies"}${
        q ? ` matching “${q}”` : ", the most popular"}`
      : `no title contains “${q}”`);
    show(out, data.movies.map((movie) => searchRow(movie)));
  } catch (err) {
    shownQuery = null; // let the same query be tried again
    status($("search-status"), `search failed: ${err.message}`, "error");
  }
}

function searchRow(movie) {
  const has = picked.has(movie.movie_id);
  return h(
    "li",
    {},
    movieInfo(movie),
    h("button", {
      type: "button",
      class: "secondary",
      disabled: has,
      "aria-label": `Add ${movie.title}`,
      onclick: (event) => {
        picked.set(movie.movie_id, { movie, rating: 5 });
        event.currentTarget.disabled = true;
        renderPicked();
      },
    }, has ? "Added" : "Add"),
  );
}

function renderPicked() {
  const list = $("picked");
  show(list, [...picked.values()].map(({ movie, rating }) => {
    const id = `rating-${movie.movie_id}`;
    return h(
      "li",
      {},
      movieInfo(movie),
      h("label", { for: id, class: "hint" }, "rating"),
      h("select", {
        id,
        onchange: (event) => { picked.get(movie.movie_id).rating = Number(event.target.value); },
      }, [5, 4, 3, 2, 1].map((r) => h("option", { value: r, selected: r === rating }, `${r} ★`))),
      h("button", {
        type: "button",
        class: "secondary",
        "aria-label": `Remove ${movie.title}`,
        onclick: () => {
          picked.delete(movie.movie_id);
          renderPicked();
        },
      }, "Remove"),
    );
  }));
  $("picked-empty").hidden = picked.size > 0;
  $("recommend-btn").disabled = picked.size === 0;
  $("clear-btn").disabled = picked.size === 0;
}

// The kinds the active release serves, in the order the page compares them.
async function kinds() {
  try {
    const releases = await api("/releases");
    const active = (releases.loaded || []).find((r) => r.active);
    if (active) return ALL_KINDS.filter((k) => active.models.includes(k));
  } catch {
    // fall through: ask for every kind, a missing one shows its error in its own card
  }
  return ALL_KINDS;
}

async function recommendPicked() {
  const movies = [...picked.values()];
  const body = {
    movie_ids: movies.map((p) => p.movie.movie_id),
    ratings: movies.map((p) => p.rating),
    k: K,
  };
  show($("user-view"));
  status($("lists-status"), "asking each model…");
  const names = await kinds();
  const answers = await Promise.all(names.map((kind) =>
    api("/recommend", { method: "POST", body: { ...body, model: kind, explain: true } })
      .catch((err) => ({ failed: err, model: kind }))));
  await renderLists(answers.map((a, i) => ({ label: names[i], answer: a })), "this history");
}

async function showUser() {
  const raw = $("user-id").value.trim();
  const view = $("user-view");
  if (!/^[0-9]{1,19}$/.test(raw)) {
    show(view, h("p", { class: "error" }, "A user id is a positive whole number."));
    return;
  }
  status($("lists-status"), "loading…");
  let history;
  try {
    history = await api(`/users/${raw}/history?limit=20`);
  } catch (err) {
    show(view, h("p", { class: "error" }, `could not load user ${raw}: ${err.message}`));
    status($("lists-status"), "");
    return;
  }
  const arm = history.arm;
  show(
    view,
    h("h3", {}, `User ${history.user_id}`),
    h("p", { class: "meta" },
      history.known ? `${history.total} movies in release ${history.version}` :
        `release ${history.version} has never seen this user: every kind falls back to popularity`,
      arm ? ` · A/B arm ${arm.name} (${arm.model})` : " · no experiment running"),
    history.movies.length
      ? [
        h("h4", {}, history.order === "recent_first" ? "Recent history (newest first)" :
          "History (by movie id; the release keeps no timestamps)"),
        h("ul", { class: "movies", "aria-label": "history" },
          history.movies.map((m) => h("li", {}, movieInfo(m)))),
      ]
      : null,
  );
  const lists = (await kinds()).map((kind) => ({ label: kind, path: `/recommend/${raw}?k=${K}&model=${kind}` }));
  if (arm) {
    lists.unshift({ label: `arm ${arm.name}: ${arm.model}`, path:
      `/recommend/${raw}?k=${K}&model=${encodeURIComponent(arm.model)}`, arm: true });
  }
  const answers = await Promise.all(lists.map((l) =>
    api(`${l.path}&explain=true`).catch((err) => ({ failed: err }))));
  await renderLists(lists.map((l, i) => ({ ...l, answer: answers[i] })), `user ${raw}`);
}

async function renderLists(lists, who) {
  const ids = new Set();
  for (const { answer } of lists) for (const r of answer.recommendations || []) ids.add(r.movie_id);
  const info = new Map();
  if (ids.size) {
    try {
      const found = await api(`/movies?ids=${[...ids].slice(0, 100).join(",")}`);
      for (const m of found.movies) info.set(m.movie_id, m);
    } catch {
      // titles still come with every recommendation; only year and genres are missing
    }
  }
  show($("lists"), lists.map((l) => listCard(l, info)));
  status($("lists-status"), `recommendations for ${who}, one list per model`);
}

function listCard({ label, answer, arm }, info) {
  if (answer.failed) {
    return h("article", { class: "list", "aria-label": label },
      h("h4", {}, label), h("p", { class: "error" }, answer.failed.message));
  }
  const meta = [`model ${answer.model}`, `release ${answer.version}`];
  if (answer.arm) meta.push(`arm ${answer.arm}`);
  if (answer.fallback && answer.fallback !== answer.model) meta.push(`filled by ${answer.fallback}`);
  return h(
    "article",
    { class: arm ? "list arm" : "list", "aria-label": `${label} recommendations`,
      "data-kind": answer.model },
    h("h4", {}, label),
    h("p", { class: "meta" }, meta.join(" · ")),
    h("ol", {}, answer.recommendations.map((r) => h(
      "li",
      {},
      movieInfo(info.get(r.movie_id) || r),
      why(r),
    ))),
  );
}

// `because`: the history movies that contributed most, or one {reason} when there are none.
function why(rec) {
  const because = rec.because || [];
  const named = because.filter((b) => b.movie_id !== undefined);
  if (named.length) {
    const names = named.map((b) => b.title || `movie ${b.movie_id}`);
    return h("p", { class: "why", title: named.map((b) => `${b.title}: ${b.weight}`).join("\n") },
      `because of ${names.join(", ")}`);
  }
  const reason = because.find((b) => b.reason);
  return reason ? h("p", { class: "why" }, reason.reason) : null;
}
