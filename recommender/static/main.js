// Entry point: two views (Try it, Run it) switched by the URL fragment, so links and the back
// button work and each view can be bookmarked.
import { api } from "./api.js";
import { follow, initOperate } from "./operate.js";
import { initTry } from "./try.js";

const VIEWS = ["try", "operate"];

function route() {
  const view = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "try";
  for (const name of VIEWS) {
    document.getElementById(name).hidden = name !== view;
    const tab = document.getElementById(`tab-${name}`);
    if (name === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  follow(view === "operate");
}

async function releaseLine() {
  const line = document.getElementById("release-line");
  try {
    const health = await api("/healthz");
    line.textContent = health.version ? `serving release ${health.version}` : "no release loaded yet";
  } catch (err) {
    line.textContent = `service unreachable: ${err.message}`;
  }
}

initTry();
initOperate();
window.addEventListener("hashchange", route);
route();
releaseLine();
