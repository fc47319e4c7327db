// "Run it": what this replica serves, the releases it holds, the experiment, and admin actions.
import { api, getToken, setToken } from "./api.js";
import { badge, h, kv, show, status, table, when } from "./dom.js";

const $ = (id) => document.getElementById(id);
const STALE_S = 120; // replicas report at least every 60 s (follower.REPORT_EVERY): two missed
const EVERY_MS = 5000; // the view follows the fleet while it is open (replicas poll as often)
let current = null;
let timer = null;

// Refresh now and every EVERY_MS while the operator view is shown; stop when it is hidden.
export function follow(on) {
  clearInterval(timer);
  timer = null;
  if (!on) return;
  refresh();
  timer = setInterval(() => { if (!document.hidden) refresh(); }, EVERY_MS);
}

export function initOperate() {
  $("op-refresh").addEventListener("click", refresh);
  $("token").value = getToken();
  tokenStatus();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value.trim());
    tokenStatus();
  });
  $("token-forget").addEventListener("click", () => {
    setToken("");
    $("token").value = "";
    tokenStatus();
  });
  $("promote-form").addEventListener("submit", promote);
  $("weights-form").addEventListener("submit", setWeights);
}

function tokenStatus() {
  status($("token-status"), getToken() ? "A token is set for this tab." :
    "No token: the view is read-only until you type one.");
}

// Everything the view shows comes from one read: GET /operator/state.
async function loadState() {
  return normalise(await api("/operator/state"));
}

function versionOf(value) {
  if (value === null || value === undefined) return null;
  if (typeof value !== "object") return String(value);
  return value.version ?? versionOf(value.to) ?? versionOf(value.data) ?? null;
}

// /operator/state -> what the view renders (the pointer's record: its newest history entry).
function normalise(s) {
  const sync = s.sync || {};
  const releases = s.releases || [];
  const history = s.history || [];
  const active = sync.serving ?? (releases.find((r) => r.active) || {}).version ?? null;
  const newest = history.find((e) => versionOf(e.to) === sync.pointer) || {};
  return {
    active,
    pointer: sync.pointer
      ? { version: sync.pointer, seq: sync.pointer_seq, at: newest.at, by: newest.by }
      : null,
    inSync: sync.in_sync ?? null,
    syncReason: sync.reason ?? null,
    syncAge: sync.sync_age_seconds ?? null,
    replica: s.replica ?? null,
    replicas: s.replicas || [],
    controlError: s.control_error ?? null,
    releases,
    experiment: s.experiment ?? null,
    history,
    rollout: s.rollout && s.rollout.length ? s.rollout : null,
    kpis: s.kpis ?? null,
    drift: (releases.find((r) => r.version === active) || {}).drift ?? null,
  };
}

async function refresh() {
  status($("op-status"), "loading…");
  try {
    current = await loadState();
  } catch (err) {
    status($("op-status"), `could not load the state: ${err.message}`, "error");
    return;
  }
  render(current);
  const updated = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
  if (current.controlError) {
    status($("op-status"), `${updated}; control plane unreadable: ${current.controlError}`, "error");
  } else {
    status($("op-status"), updated);
  }
}

function render(state) {
  const pointer = versionOf(state.pointer);
  const sync = state.inSync === null ? badge("unknown") :
    badge(state.inSync ? "in sync" : "out of sync", state.inSync ? "yes" : "no");
  show($("op-summary"),
    card("Active release", state.active || "none (not ready)"),
    card("Pointer (production)", pointer || "not set",
      state.pointer && typeof state.pointer === "object"
        ? [state.pointer.seq !== undefined ? `seq ${state.pointer.seq}` : null,
          state.pointer.at ? when(state.pointer.at) : null,
          state.pointer.by ? `by ${state.pointer.by}` : null].filter(Boolean).join(" · ")
        : ""),
    card(state.replica ? `This replica (${state.replica})` : "This replica", sync,
      [state.syncReason, state.syncAge !== null ? `last poll ${state.syncAge} s ago` : null]
        .filter(Boolean).join(" · ")),
    card("Experiment", experimentName(state.experiment)));
  renderReleases(state);
  renderExperiment(state.experiment);
  renderRollout(state.rollout, state.kpis);
  show($("op-drift"), state.drift
    ? verdictWithDetails(state.drift, { no_drift: "yes", drift: "no" })
    : h("p", { class: "hint" }, "No drift report for the active release."));
  renderHistory(state.history);
  renderReplicas(state.replicas);
  if (state.active) $("release-line").textContent = `serving release ${state.active}`;
}

// The rollout controller's decisions (newest first), each with the numbers it decided on.
function renderRollout(records, kpis) {
  const box = $("op-rollout");
  if (!records && !kpis) {
    show(box, h("p", { class: "hint" }, "No rollout decision recorded yet."));
    return;
  }
  const parts = [];
  if (records) {
    const wrap = h("div", { class: "scroll" }, h("table", {}));
    table(wrap.firstChild, ["At (UTC)", "Action", "By", "Reason", "State"],
      records.slice(0, 20).map((r) => [when(r.at), r.action || "", r.by || "", r.reason || "",
        h("details", {}, h("summary", {}, "state"), kv(r.to ?? r.data ?? null))]));
    parts.push(wrap);
  }
  if (kpis) parts.push(h("h4", {}, "Per-arm KPIs"), kv(kpis));
  show(box, parts);
}

function renderReplicas(replicas) {
  const box = $("op-replicas");
  if (!replicas.length) {
    show(box, h("p", { class: "hint" }, "No replica has reported to the control plane."));
    return;
  }
  const wrap = h("div", { class: "scroll" }, h("table", {}));
  // A report is what the replica said when it last wrote one: an old one may be a replica
  // that is gone, so its sync state is shown as stale rather than trusted.
  const now = Date.now() / 1000;
  table(wrap.firstChild, ["Replica", "Serving", "In sync", "Pointer seq", "Experiment seq",
    "Reported (UTC)"], replicas.map((r) => [
    r.replica ?? r.id ?? "",
    versionOf(r.serving ?? r.version) ?? "",
    typeof r.at === "number" && now - r.at > STALE_S ? badge("stale", "unknown")
      : r.in_sync === undefined ? "" : badge(r.in_sync ? "yes" : "no"),
    String(r.pointer_seq ?? ""),
    String(r.experiment_seq ?? ""),
    when(r.at),
  ]));
  show(box, wrap);
}

function card(title, value, detail = "") {
  return h("div", { class: "card" },
    h("div", { class: "meta" }, title), h("div", { class: "value" }, value),
    detail ? h("div", { class: "meta" }, detail) : null);
}

function experimentName(exp) {
  if (!exp || exp.configured === false) return "none";
  const arms = (exp.arms || []).map((a) => `${a.name} ${a.weight}`).join(" / ");
  return `${exp.name || "experiment"}${exp.status ? ` (${exp.status})` : ""}: ${arms}`;
}

// Per kind, the test metrics the trainer stored (docs/evaluation.md): quality, then popularity
// bias. Headers are the manifest's keys; hovering one says what it measures.
const METRICS = [
  ["ndcg@10", 3, "NDCG@10 of the held-out item, full ranking"],
  ["hr@10", 3, "hit rate: share of users whose held-out item is in their top 10"],
  ["coverage@10", 3, "catalogue coverage: share of items in at least one user's top 10"],
  ["gini@10", 3, "exposure Gini over items in all users' top 10 (0 = equal, 1 = one item)"],
  ["long_tail@10", 3, "share of recommended slots outside the most popular 20% of items"],
  ["novelty@10", 2, "mean -log2(share of users who saw the item), bits"],
];
const DASH = "–"; // a value the manifest does not have

function num(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : DASH;
}

// One grouping's summary: "gender 1.15× (M 0.060 / F 0.052)", the NDCG@10 of the best and the
// worst group among those with enough users to be compared.
function fairnessLine(name, f) {
  const ratio = f && typeof f["ndcg@10_max_min"] === "number"
    ? `${f["ndcg@10_max_min"].toFixed(2)}×` : DASH;
  const floor = f && typeof f.min_users === "number" ? f.min_users : 50;
  const group = (g) => `${g.name} ${num(g["ndcg@10"], 3)}`;
  const pair = f && f.best && f.worst ? `(${group(f.best)} / ${group(f.worst)})`
    : `(no two groups of ≥ ${floor} users)`;
  const title = f ? `NDCG@10 best/worst group over ${f.ratioed ?? DASH} of ${f.groups ?? DASH}` +
    ` groups with ≥ ${floor} users; HR@10 max/min ${num(f["hr@10_max_min"], 2)}` : null;
  return h("li", { "data-grouping": name, title }, `${name} ${ratio} ${pair}`);
}

function fairnessCell(fairness) {
  if (!fairness || typeof fairness !== "object") return DASH;
  const entries = Object.entries(fairness);
  if (!entries.length) return DASH;
  return h("ul", { class: "fairness" }, entries.map(([name, f]) => fairnessLine(name, f)));
}

// The rating part's test RMSE/MAE next to its global mean + biases baseline.
function ratingLine(rating) {
  if (!rating || typeof rating !== "object") {
    return h("p", { class: "meta rating" }, `rating (test): ${DASH}`);
  }
  const r = rating;
  return h("p", { class: "meta rating" }, "rating (test): ",
    h("span", { "data-metric": "rmse" }, `RMSE ${num(r.rmse, 4)}`), " · ",
    h("span", { "data-metric": "mae" }, `MAE ${num(r.mae, 4)}`),
    " vs global mean + biases ",
    h("span", { "data-metric": "baseline_rmse" }, `RMSE ${num(r.baseline_rmse, 4)}`), " · ",
    h("span", { "data-metric": "baseline_mae" }, `MAE ${num(r.baseline_mae, 4)}`));
}

function metricsCell(release) {
  const kinds = release.metrics;
  if (!kinds || typeof kinds !== "object" || Array.isArray(kinds)) {
    return h("span", { class: "hint" }, (release.models || []).join(", ") || DASH);
  }
  const fairness = release.fairness && typeof release.fairness === "object" ? release.fairness : {};
  const grid = h("table", { class: "metrics" });
  table(grid, [
    "kind",
    ...METRICS.map(([name, , title]) => h("abbr", { title }, name)),
    h("abbr", { title: "NDCG@10 max/min between user groups (best / worst group)" },
      "fairness"),
  ], Object.entries(kinds).map(([kind, value]) => {
    const m = value && typeof value === "object" ? (value.metrics ?? value) : {};
    return [
      h("strong", { "data-kind": kind }, kind),
      ...METRICS.map(([name, digits]) => h("span", { "data-metric": name }, num(m[name], digits))),
      fairnessCell(fairness[kind]),
    ];
  }));
  return h("div", { class: "offline" }, grid, ratingLine(release.rating));
}

function gateCell(release) {
  const gate = release.gate;
  if (gate === undefined) return h("span", { class: "hint" }, "—");
  if (gate === null) return h("span", { class: "hint" }, "not gated");
  return verdictWithDetails(gate, { pass: "pass", fail: "fail", inconclusive: "inconclusive" });
}

// A report with a `verdict` (gate, drift): the verdict as a badge, the numbers behind it folded.
function verdictWithDetails(report, kinds) {
  const verdict = String(report.verdict ?? "unknown");
  return h("div", {}, badge(verdict, kinds[verdict] || "unknown"),
    h("details", {}, h("summary", {}, "the numbers"), kv(report)));
}

function renderReleases(state) {
  const rows = state.releases.map((r) => [
    h("strong", {}, r.version),
    r.version === state.active || r.active ? badge("active", "yes") : "",
    r.memory_bytes ? `${(r.memory_bytes / 1e6).toFixed(1)} MB` : "",
    gateCell(r),
    metricsCell(r),
  ]);
  // the gate before the wide metrics: it stays in view when the table scrolls sideways
  table($("op-releases"),
    ["Version", "Serving", "Memory", "Gate", "Offline metrics (test): quality, bias, fairness"],
    rows.length ? rows : [["none loaded", "", "", "", ""]]);
  show($("versions"), state.releases.map((r) => h("option", { value: r.version })));
}

function renderExperiment(exp) {
  const box = $("op-experiment");
  const fields = $("weights-fields");
  if (!exp || exp.configured === false || !exp.arms) {
    show(box, h("p", { class: "hint" }, "No experiment: every request gets the default kind."));
    show(fields, h("p", { class: "hint" }, "No experiment configured."));
    return;
  }
  const counts = exp.counts || {};
  const wrap = h("div", { class: "scroll" }, h("table", {}));
  table(wrap.firstChild, ["Arm", "Model", "Weight", "Requests here"],
    exp.arms.map((a) => [a.name, a.model, String(a.weight), String(counts[a.name] ?? "")]));
  show(box, h("p", { class: "meta" }, experimentName(exp)), wrap);
  // Refreshes keep what the operator is typing: inputs they edited are left alone.
  const names = exp.arms.map((a) => `${a.name}=${a.model}`).join(",");
  if (fields.dataset.arms === names) {
    for (const a of exp.arms) {
      const input = fields.querySelector(`input[data-arm="${CSS.escape(a.name)}"]`);
      if (input && !input.dataset.dirty) input.value = a.weight;
    }
    return;
  }
  fields.dataset.arms = names;
  show(fields, exp.arms.map((a) => [
    h("label", { for: `weight-${a.name}` }, `Weight of ${a.name} (${a.model})`),
    h("input", { id: `weight-${a.name}`, "data-arm": a.name, type: "number", min: "0",
      step: "any", value: a.weight, required: true,
      oninput: (event) => { event.target.dataset.dirty = "1"; } }),
  ]));
}

function renderHistory(history) {
  const rows = (Array.isArray(history) ? history : []).slice(0, 20).map((e) => [
    when(e.at),
    versionOf(e.from) || "—",
    versionOf(e.to) || "—",
    e.by || "",
    e.action || "",
    e.reason || "",
  ]);
  table($("op-history"), ["At (UTC)", "From", "To", "By", "Action", "Reason"],
    rows.length ? rows : [["no switch yet", "", "", "", "", ""]]);
}

async function promote(event) {
  event.preventDefault();
  const version = $("promote-version").value.trim();
  if (!/^v[0-9]{1,6}\.[0-9]{1,9}$/.test(version)) {
    status($("admin-status"), "A version looks like v0.2.", "error");
    return;
  }
  await admin("/switch", "POST", { version, reason: $("promote-reason").value },
    (out) => `promoted ${version}${out && out.from ? ` (was ${versionOf(out.from)})` : ""}`);
}

async function setWeights(event) {
  event.preventDefault();
  const weights = {};
  for (const input of document.querySelectorAll("#weights-fields input[data-arm]")) {
    weights[input.dataset.arm] = Number(input.value);
  }
  if (!Object.keys(weights).length) {
    status($("admin-status"), "No experiment to set weights for.", "error");
    return;
  }
  const ok = await admin("/experiment/weights", "PUT",
    { weights, reason: $("weights-reason").value },
    () => `weights set: ${Object.entries(weights).map(([k, v]) => `${k} ${v}`).join(", ")}`);
  if (ok) {
    for (const input of document.querySelectorAll("#weights-fields input")) {
      delete input.dataset.dirty;
    }
  }
}

async function admin(path, method, body, done) {
  if (!getToken()) {
    status($("admin-status"), "Type the admin token first: nothing was sent.", "error");
    return false;
  }
  status($("admin-status"), "sending…");
  try {
    const out = await api(path, { method, body, admin: true });
    status($("admin-status"), done(out), "ok");
    await refresh();
    return true;
  } catch (err) {
    status($("admin-status"), `refused (${err.status || "no answer"}): ${err.detail || err.message}`,
      "error");
    return false;
  }
}
